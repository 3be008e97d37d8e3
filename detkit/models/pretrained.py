"""ImageNet weights for torchvision and timm architectures: where they are cached, and fetching them safely.

Never hangs offline: the network is probed with a short timeout first, and ``DETKIT_OFFLINE=1`` skips it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision.models as tvm

from detkit.errors import WeightsUnavailableError
from detkit.io import atomic_write

logger = logging.getLogger(__name__)

#: environment variable that, when set to a true value, makes detkit assume there is no network at all
OFFLINE_ENV = "DETKIT_OFFLINE"

# Hugging Face file names timm looks for, in its own order of preference.
_HF_FILENAMES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class PretrainedWeights:
    """Where one architecture's ImageNet weights come from and the preprocessing they were trained with.

    Attributes:
        arch: model name as given to ``create_classifier`` (``resnet18``, ``timm:resnet10t``).
        url: download URL ("" when the weights only live on the Hugging Face hub).
        cache_path: the file torch.hub caches ``url`` to (``torch.hub.get_dir()/checkpoints/<name>``), or None.
        hf_hub_id: Hugging Face repository of timm weights, or None.
        mean: per-channel RGB mean in [0, 1] units.
        std: per-channel RGB std in [0, 1] units.
        input_size: square input side in pixels the weights were evaluated at.
    """

    arch: str
    url: str
    cache_path: Path | None
    hf_hub_id: str | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int

    def describe_cache(self) -> str:
        """Human-readable list of the places checked for a cached copy."""
        places = []
        if self.cache_path is not None:
            places.append(str(self.cache_path))
        if self.hf_hub_id:
            places.append(f"{_hf_cache_dir()}/models--{self.hf_hub_id.replace('/', '--')} (Hugging Face cache)")
        return " or ".join(places) if places else "(no cache location known)"


def hub_cache_path(url: str) -> Path:
    """The file ``torch.hub`` caches ``url`` to: ``torch.hub.get_dir()/checkpoints/<basename of url>``.

    ``torch.hub.get_dir()`` follows ``TORCH_HOME`` (default ``~/.cache/torch``) and is read on every call.
    """
    filename = os.path.basename(urllib.parse.urlparse(url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def torchvision_pretrained(name: str, tag: str = "DEFAULT") -> PretrainedWeights:
    """ImageNet weights torchvision publishes for architecture ``name``.

    Args:
        name: torchvision model name (``resnet50``).
        tag: the weights enum member (``IMAGENET1K_V1``, ``IMAGENET1K_V2``) or ``DEFAULT`` (the best one).

    Raises:
        ValueError: if torchvision has no such weights for ``name``.
    """
    try:
        weights = tvm.get_model_weights(name)[tag]
    except (ValueError, KeyError) as err:
        raise ValueError(f"torchvision publishes no weights {tag!r} for model name {name!r}: {err}") from err
    preprocess = weights.transforms()
    return PretrainedWeights(
        arch=name,
        url=weights.url,
        cache_path=hub_cache_path(weights.url),
        hf_hub_id=None,
        mean=tuple(float(m) for m in preprocess.mean),
        std=tuple(float(s) for s in preprocess.std),
        input_size=int(preprocess.crop_size[0]),
    )


def torchvision_weight_tags(name: str) -> list[str]:
    """Names of the weights enum members torchvision has for ``name`` (e.g. ``["IMAGENET1K_V1", ...]``)."""
    try:
        return [w.name for w in tvm.get_model_weights(name)]
    except (ValueError, KeyError):
        return []


def timm_pretrained(name: str) -> PretrainedWeights:
    """The default pretrained config timm has for ``name`` (without the ``timm:`` prefix).

    Raises:
        ValueError: if timm has no pretrained config for ``name``.
    """
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise ValueError(f"timm has no pretrained weights for model name {name!r}")
    url = cfg.url or ""
    return PretrainedWeights(
        arch=f"timm:{name}",
        url=url,
        cache_path=hub_cache_path(url) if url else None,
        hf_hub_id=cfg.hf_hub_id or None,
        mean=tuple(float(m) for m in cfg.mean),
        std=tuple(float(s) for s in cfg.std),
        input_size=int(cfg.input_size[-1]),
    )


def find_cached(weights: PretrainedWeights) -> Path | None:
    """A cached copy of ``weights`` on disk (torch.hub checkpoints dir, then the Hugging Face cache), or None."""
    if weights.cache_path is not None and weights.cache_path.is_file():
        return weights.cache_path
    hub = _huggingface_hub()
    if weights.hf_hub_id and hub is not None:
        for filename in _HF_FILENAMES:
            found = hub.try_to_load_from_cache(weights.hf_hub_id, filename)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    return None


def network_available(url: str, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to ``url``'s host can be opened within ``timeout`` seconds.

    Returns False at once when ``DETKIT_OFFLINE`` is set to a true value. The probe (DNS + connect) runs
    in a daemon thread so a stalled resolver cannot block the caller beyond ``timeout``.
    """
    if os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result = {"ok": False}

    def probe() -> None:
        try:
            with socket.create_connection((parsed.hostname, port), timeout=timeout):
                result["ok"] = True
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return result["ok"]


def download_file(url: str, dst: str | os.PathLike, timeout: float = 10.0, check_hash: bool = True) -> Path:
    """Download ``url`` to ``dst`` atomically (temp file in the same folder, then ``os.replace``).

    ``timeout`` bounds each socket operation (connect, every read), so a stalled server raises instead of
    hanging. With ``check_hash``, a file named like torchvision's ``name-<sha256 prefix>.pth`` is verified.

    Raises:
        OSError: on any network or file error (``urllib.error.URLError`` is one); ``dst`` is left untouched.
        ValueError: if the SHA-256 prefix in the file name does not match the downloaded bytes.
    """
    dst = Path(dst)
    expected = hash_prefix(dst.name) if check_hash else None

    def fetch(out: Any) -> None:
        sha = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                sha.update(chunk)
        if expected is not None and not sha.hexdigest().startswith(expected):
            raise ValueError(
                f"downloaded {url} has sha256 {sha.hexdigest()[:len(expected)]}..., expected {expected}... "
                f"(from its file name)"
            )

    return atomic_write(dst, fetch)


def hash_prefix(filename: str) -> str | None:
    """The SHA-256 prefix torchvision puts in a weights file name (``resnet18-f37072fd.pth``), or None."""
    # torchvision names its files "<arch>-<first 8+ hex digits of sha256>.pth".
    stem = filename.rsplit(".", 1)[0]
    if "-" not in stem:
        return None
    candidate = stem.rsplit("-", 1)[1]
    if len(candidate) >= 8 and all(c in "0123456789abcdef" for c in candidate):
        return candidate
    return None


def _huggingface_hub() -> Any:
    """The ``huggingface_hub`` module (installed with timm) with its ``constants``, or None where it is missing."""
    try:
        import huggingface_hub.constants
    except ImportError:
        return None
    return huggingface_hub


def _hf_cache_dir() -> str:
    hub = _huggingface_hub()
    if hub is not None:
        return str(hub.constants.HF_HUB_CACHE)
    return os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub")


def _download_from_hf(hf_hub_id: str, timeout: float) -> Path:
    hub = _huggingface_hub()
    if hub is None:
        raise OSError(f"cannot download {hf_hub_id}: huggingface_hub is not installed")
    errors = []
    for filename in _HF_FILENAMES:
        try:
            return Path(hub.hf_hub_download(hf_hub_id, filename, etag_timeout=timeout))
        except Exception as err:  # noqa: BLE001 - the hub raises many types; all mean "not this file"
            errors.append(f"{filename}: {err}")
    raise OSError(f"cannot download {hf_hub_id} from the Hugging Face hub: {'; '.join(errors)}")


def locate_pretrained(weights: PretrainedWeights, mode: str, timeout: float = 10.0) -> Path | None:
    """Path to a local copy of ``weights``, downloading it when it is not cached and the network answers.

    Args:
        weights: which weights (see ``torchvision_pretrained`` / ``timm_pretrained``).
        mode: ``"imagenet"`` (weights required) or ``"auto"`` (fall back to random init).
        timeout: seconds for the network probe and for each socket operation of the download.

    Returns:
        The local file, or None in ``auto`` mode when the weights cannot be had (a WARNING is logged saying
        the model starts from random initialisation and how to provide the weights).

    Raises:
        WeightsUnavailableError: in ``imagenet`` mode when the weights are neither cached nor downloadable;
            the message names the cache file path and the ``--weights PATH`` alternative.
        ValueError: for a ``mode`` other than ``imagenet`` / ``auto``.
    """
    if mode not in ("imagenet", "auto"):
        raise ValueError(f"mode must be 'imagenet' or 'auto', got {mode!r}")
    cached = find_cached(weights)
    if cached is not None:
        return cached

    reason = "the network is unreachable"
    probe_url = "https://huggingface.co" if weights.hf_hub_id else weights.url
    if network_available(probe_url, timeout=min(timeout, 3.0)):
        try:
            if weights.hf_hub_id:
                return _download_from_hf(weights.hf_hub_id, timeout)
            logger.info("downloading %s to %s", weights.url, weights.cache_path)
            return download_file(weights.url, weights.cache_path, timeout=timeout)
        except (OSError, ValueError) as err:
            reason = f"the download failed ({err})"

    where = weights.describe_cache()
    source = weights.url or f"the Hugging Face hub repository {weights.hf_hub_id}"
    if mode == "imagenet":
        raise WeightsUnavailableError(
            f"ImageNet weights for {weights.arch} are not available: they are not cached at {where} and {reason}. "
            f"Put the file from {source} at that path (TORCH_HOME={os.environ.get('TORCH_HOME', '<unset>')} "
            f"selects the torch cache), or pass a local file with --weights PATH (model.weights=PATH), "
            f"or use --weights none."
        )
    logger.warning(
        "weights=auto: ImageNet weights for %s are not cached at %s and %s; the model starts from RANDOM "
        "INITIALISATION (pretrained: false in the run metadata). To fine-tune from ImageNet, put %s at "
        "that path or pass --weights PATH.",
        weights.arch,
        where,
        reason,
        source,
    )
    return None
