"""K-fold cross-validation (Dive into Deep Learning, 'Model Selection'): one run per fold of the train split, and the
table of every fold's best metric with its mean and standard deviation (CSV, JSON, text).

Folds come from :func:`detkit.data.folds.fold_indices` (stratified for classification, per image for detection),
seeded by ``train.seed``: the same seed gives the same folds.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from detkit.config.sections import ExperimentConfig
from detkit.engine.experiment import run_experiment
from detkit.engine.trainer import Hook
from detkit.io import atomic_write_json, atomic_write_text

__all__ = ["fold_config", "format_kfold_table", "run_kfold", "run_kfold_and_report"]

logger = logging.getLogger(__name__)


def fold_config(cfg: ExperimentConfig, folds: int, fold: int) -> ExperimentConfig:
    """The config of fold ``fold`` of ``folds``: ``data.kfold``/``data.fold`` set, output ``OUTPUT/fold_<fold>``."""
    return replace(cfg, data=replace(cfg.data, kfold=folds, fold=fold),
                   train=replace(cfg.train, output=str(Path(cfg.train.output) / f"fold_{fold}")))


def run_kfold(cfg: ExperimentConfig, folds: int, hooks: Sequence[Hook] = ()) -> dict[str, Any]:
    """Train one run per fold and write ``OUTPUT/kfold.csv`` and ``OUTPUT/kfold.json``.

    Args:
        cfg: the experiment; its train split is divided into ``folds`` folds (``val_split`` is not used).
        folds: K >= 2.
        hooks: epoch hooks for every fold's trainer.

    Returns:
        ``{"metric", "mode", "folds": [{"fold", "value", "epoch", "run", ...best row's val_* scalars}], "mean",
        "std"}``; ``std`` is the sample standard deviation over the folds.
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds: expected an integer >= 2, got {folds!r}")
    rows, metric, mode = [], None, None
    for fold in range(folds):
        fold_cfg = fold_config(cfg, folds, fold)
        logger.info("k-fold: fold %d of %d -> %s", fold + 1, folds, fold_cfg.train.output)
        best = run_experiment(fold_cfg, hooks=hooks).get("best") or {}
        metric, mode = best.get("metric", metric), best.get("mode", mode)
        scalars = {k: v for k, v in best.items() if k.startswith("val_") and isinstance(v, (int, float))}
        rows.append({"fold": fold, "value": best.get("value"), "epoch": best.get("epoch"),
                     "run": fold_cfg.train.output, **scalars})
    values = [r["value"] for r in rows if isinstance(r["value"], (int, float))]
    result = {"metric": metric, "mode": mode, "folds": rows,
              "mean": statistics.fmean(values) if values else math.nan,
              "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    out = Path(cfg.train.output)
    atomic_write_json(out / "kfold.json", result)
    atomic_write_text(out / "kfold.csv", _csv(rows))
    return result


def _csv(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def format_kfold_table(result: dict[str, Any]) -> str:
    """The folds' best metric as a text table with the mean ± std line (what ``tools/kfold.py`` prints)."""
    metric = result.get("metric") or "metric"
    lines = [f"{'fold':>4}  {metric:>12}  {'epoch':>5}  run"]
    for row in result["folds"]:
        value = row["value"]
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"
        lines.append(f"{row['fold']:>4}  {shown:>12}  {row['epoch'] if row['epoch'] is not None else '-':>5}  "
                     f"{row['run']}")
    lines.append(f"mean {metric} {result['mean']:.4f} +- {result['std']:.4f} (sample std over "
                 f"{len(result['folds'])} folds)")
    return "\n".join(lines)


def run_kfold_and_report(cfg: ExperimentConfig, folds: int) -> str:
    """:func:`run_kfold`, then the text ``tools/kfold.py`` and ``finetune.py --folds`` print: the table and where
    its files are."""
    result = run_kfold(cfg, folds)
    return f"{format_kfold_table(result)}\nk-fold table: {Path(cfg.train.output) / 'kfold.csv'} and kfold.json"
