"""Hyperparameter runs: ``RunBuilder`` makes the grid of named tuples, ``RunManager`` files each run's results.

Each run gets its own directory (TensorBoard events, checkpoints); results go to one CSV and one JSON table.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import re
from collections import namedtuple
from pathlib import Path
from typing import Any, Sequence

from detkit.io import atomic_write_json, atomic_write_text, json_default

_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+\-]")


class RunBuilder:
    """Builds the runs of a grid search: every combination of the given values."""

    @staticmethod
    def get_runs(params: dict[str, Sequence[Any]]) -> list[tuple]:
        """One named tuple ``Run`` per combination of ``params``' values, in product order.

        Field names are the keys with characters that are not valid in identifiers replaced by ``_``
        (``optim.lr`` → ``optim_lr``); the original keys stay available as ``Run._keys`` and
        ``run._params()`` returns ``{original key: value}``.

        Args:
            params: ``{name: [values...]}``, e.g. ``{"lr": [0.01, 0.001], "batch_size": [32, 64]}``.

        Returns:
            ``len(values_1) × len(values_2) × ...`` runs, e.g. ``Run(lr=0.01, batch_size=32)`` first.

        Raises:
            ValueError: for no keys, a key with no values, or two keys mapping to the same field name.
        """
        if not params:
            raise ValueError("params must name at least one hyperparameter, got {}")
        keys = list(params)
        values = []
        for key in keys:
            options = params[key]
            if isinstance(options, (str, bytes)) or not isinstance(options, Sequence):
                options = [options]
            if len(options) == 0:
                raise ValueError(f"hyperparameter {key!r} has no values to try")
            values.append(list(options))
        fields = [_field_name(key) for key in keys]
        if len(set(fields)) != len(fields):
            raise ValueError(f"hyperparameter names {keys} collide as field names {fields}")
        base = namedtuple("Run", fields)
        run_cls = type(
            "Run",
            (base,),
            {"__slots__": (), "_keys": tuple(keys), "_params": lambda self: dict(zip(self._keys, self))},
        )
        return [run_cls(*combo) for combo in itertools.product(*values)]


def run_name(run: tuple) -> str:
    """``key=value`` pairs joined by commas (``lr=0.01,batch_size=32``), safe as a directory name."""
    keys = getattr(run, "_keys", None) or run._fields
    return _UNSAFE.sub("_", ",".join(f"{k}={_format(v)}" for k, v in zip(keys, run)))


class RunManager:
    """Gives each run a directory and collects its metrics into one table sorted by the best metric.

    Args:
        root: folder for all runs: ``root/<run name>/`` each, plus ``results.csv`` and ``results.json``.
        metric: the metric that ranks runs (``val_acc``, ``val_loss``, ``map``).
        mode: ``"max"`` or ``"min"``: whether a larger or smaller ``metric`` is better.

    Raises:
        ValueError: for a ``mode`` other than ``max`` / ``min``.
    """

    def __init__(self, root: str | os.PathLike, metric: str = "val_acc", mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.root = Path(root)
        self.metric = metric
        self.mode = mode
        self._rows: dict[str, dict[str, Any]] = {}

    def run_dir(self, run: tuple) -> Path:
        """The run's own directory ``root/<run name>`` (created), for its TensorBoard events and checkpoints."""
        path = self.root / run_name(run)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def record(self, run: tuple, metrics: dict[str, Any]) -> None:
        """Record ``metrics`` for ``run``; may be called after every epoch.

        The run's row keeps the latest value of every metric, plus ``best_<metric>`` and ``best_epoch``
        (the ``epoch`` entry of the best record, if given) over all records of the run.
        """
        name = run_name(run)
        row = self._rows.setdefault(name, {"run": name, **_params(run), "status": "ok", "records": 0})
        row.update(metrics)
        row["records"] += 1
        value = metrics.get(self.metric)
        if _is_number(value):
            best_key = f"best_{self.metric}"
            if not _is_number(row.get(best_key)) or self._better(float(value), row[best_key]):
                row[best_key] = float(value)
                if "epoch" in metrics:
                    row["best_epoch"] = metrics["epoch"]

    def mark_failed(self, run: tuple, error: str) -> None:
        """Record that ``run`` failed with message ``error``; it is listed last in the results."""
        name = run_name(run)
        row = self._rows.setdefault(name, {"run": name, **_params(run), "records": 0})
        row["status"] = "failed"
        row["error"] = str(error)

    def results(self) -> list[dict[str, Any]]:
        """Rows sorted best first by ``best_<metric>``; runs without the metric (or failed) come last."""
        best_key = f"best_{self.metric}"
        sign = -1.0 if self.mode == "max" else 1.0

        def order(row: dict[str, Any]) -> tuple:
            value = row.get(best_key)
            if row.get("status") != "ok" or not _is_number(value):
                return (1, 0.0)
            return (0, sign * float(value))

        return sorted(self._rows.values(), key=order)

    def best(self) -> dict[str, Any] | None:
        """The best run's row, or None when no run has recorded ``metric``."""
        rows = self.results()
        if rows and rows[0].get("status") == "ok" and _is_number(rows[0].get(f"best_{self.metric}")):
            return rows[0]
        return None

    def save_results(self) -> tuple[Path, Path]:
        """Write ``root/results.csv`` and ``root/results.json`` atomically (temp file + fsync + rename).

        Safe to call after every run, so a crash keeps the table of the runs finished so far.

        Returns:
            ``(csv path, json path)``.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        rows = self.results()
        columns: list[str] = []
        for row in rows:
            columns += [c for c in row if c not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _csv_value(row.get(c)) for c in columns})
        csv_path = atomic_write_text(self.root / "results.csv", buffer.getvalue())
        document = {"metric": self.metric, "mode": self.mode, "runs": rows}
        json_path = atomic_write_json(self.root / "results.json", document)
        return csv_path, json_path

    def _better(self, value: float, best: float) -> bool:
        return value > best if self.mode == "max" else value < best


def _field_name(key: str) -> str:
    name = re.sub(r"\W", "_", str(key))
    if not name or name[0].isdigit() or name.startswith("_"):
        name = "p" + name
    return name


def _format(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "-".join(_format(v) for v in value)
    return str(value)


def _params(run: tuple) -> dict[str, Any]:
    return run._params() if hasattr(run, "_params") else run._asdict()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=json_default)
    return value
