"""Hyperparameter grids: one training run per combination of values, results sorted by the best metric.

What ``tools/tune.py`` runs; :class:`~detkit.engine.runs.RunManager` files each run's results.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from detkit.config.core import apply_overrides, resolve_key
from detkit.config.sections import ExperimentConfig
from detkit.engine.experiment import run_experiment
from detkit.engine.runs import RunBuilder, RunManager
from detkit.engine.tasks import get_task
from detkit.errors import USER_ERRORS, one_line

__all__ = ["tune"]

logger = logging.getLogger(__name__)


def tune(cfg: ExperimentConfig, grid: dict[str, list[Any]], output: str | Path) -> dict[str, Any]:
    """Train one run per combination of ``grid`` values and write a results table sorted by the best metric.

    Args:
        cfg: the base config; each run overrides the grid's keys.
        grid: ``{config key: [values]}``; keys are dotted (``optim.lr``) or unique leaf names (``lr``).
        output: the root directory; each run gets its own sub-directory (and TensorBoard events).

    Returns:
        ``{"runs": [{"params": {...}, "dir": str, "best": {...}, "value": best metric or None}], "metric": name,
        "csv": path, "json": path}``, runs in the order of ``results.csv`` (best first, failed runs last).
    """
    if not grid:
        raise ValueError("grid: expected at least one key with values, e.g. {'optim.lr': [0.01, 0.001]}")
    if (Path(output) / "results.json").exists() and not cfg.train.exist_ok:
        raise ValueError(f"--output: {output} already holds a grid's results; replace them with --exist-ok "
                         f"(train.exist_ok=true) or choose another --output")
    keys = {name: resolve_key(name) for name in grid}
    task_cls = get_task(cfg.task)
    manager = RunManager(Path(output), metric=task_cls.best_metric, mode=task_cls.best_mode)
    runs_out = []
    for run in RunBuilder.get_runs({name: list(values) for name, values in grid.items()}):
        params = run._params()  # {key as given: value}
        run_dir = manager.run_dir(run)
        overrides = [(keys[name], value) for name, value in params.items()]
        run_cfg = apply_overrides(cfg, overrides + [("train.output", str(run_dir)), ("train.resume", None)])
        logger.info("run %s -> %s", ", ".join(f"{keys[n]}={v}" for n, v in params.items()), run_dir)
        try:
            result = run_experiment(run_cfg)
        except USER_ERRORS as err:  # e.g. a learning rate that diverges: record it and go on
            logger.error("run %s failed: %s", run_dir.name, one_line(err))
            manager.mark_failed(run, one_line(err))
            manager.save_results()
            runs_out.append({"params": params, "dir": str(run_dir), "best": {}, "value": None, "error": one_line(err)})
            continue
        best = result.get("best") or {}
        # metrics only (never "lr", which would shadow a grid column of the same name)
        scalars = {k: v for k, v in best.items() if (k == "epoch" or k.startswith(("train_", "val_")))
                   and isinstance(v, (int, float)) and not isinstance(v, bool)}
        manager.record(run, scalars)
        manager.save_results()
        runs_out.append({"params": params, "dir": str(run_dir), "best": scalars, "value": best.get("value")})
    csv_path, json_path = manager.save_results()
    order = {row["run"]: i for i, row in enumerate(manager.results())}  # results.csv's order: best first
    runs_out.sort(key=lambda r: order[Path(r["dir"]).name])
    return {"runs": runs_out, "metric": manager.metric, "csv": str(csv_path), "json": str(json_path)}
