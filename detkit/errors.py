"""The errors a user fixes by changing a config, a file or a flag, and how a CLI prints them.

Torch-free, so every layer (config, data, models, engine, tools) can raise and catch them without heavy imports.
"""

from __future__ import annotations

__all__ = [
    "USER_ERRORS",
    "ConfigError",
    "DatasetError",
    "NonFiniteLossError",
    "WeightsUnavailableError",
    "one_line",
]


class ConfigError(ValueError):
    """A config file, key or value that cannot be mapped onto ``ExperimentConfig``."""


class DatasetError(ValueError):
    """An image, annotation file or dataset folder that cannot be used; the message names it."""


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for (``weights="imagenet"``) but are neither cached nor downloadable."""


class NonFiniteLossError(FloatingPointError):
    """The training loss (or the weights) became NaN or infinite; the message names the batch's files."""


#: errors a user fixes by changing the config, data or weights: CLIs print them as one line, no traceback
#: (ConfigError and DatasetError are ValueErrors)
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, FileNotFoundError, NotADirectoryError, PermissionError, WeightsUnavailableError, NonFiniteLossError)


def one_line(err: BaseException) -> str:
    """``err``'s message on a single line (a CLI's error output)."""
    return " ".join(str(err).split()) or type(err).__name__
