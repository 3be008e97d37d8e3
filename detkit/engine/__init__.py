"""Training engine: the one trainer for every task, task objects, optimiser groups, schedules and freezing.

Also checkpoints, distributed helpers, hyperparameter runs, and experiments built from a config.
"""

from detkit.engine.checkpoint import atomic_save, atomic_write_text, load_checkpoint, save_checkpoint
from detkit.engine.distributed import (
    DistInfo,
    ShardSampler,
    cleanup_distributed,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
    resolve_device,
    unwrap_model,
)
from detkit.engine.freeze import FreezeConfig, Freezer
from detkit.engine.optim import OptimConfig, build_optimizer, build_param_groups
from detkit.engine.runs import RunBuilder, RunManager
from detkit.engine.schedule import ScheduleConfig, build_scheduler
from detkit.engine.tasks import ClassificationEvaluator, ClassificationTask, Evaluator, Task
from detkit.engine.trainer import (
    NonFiniteLossError,
    StopTraining,
    Trainer,
    evaluate,
    seed_everything,
    seed_worker,
)

# detkit.engine.experiment imports detkit.config, which imports this package's config dataclasses;
# importing it lazily keeps `import detkit.config` free of an import cycle.
_EXPERIMENT_NAMES = ("Experiment", "build_experiment", "evaluate_checkpoint", "run_experiment", "tune")


def __getattr__(name: str):
    if name in _EXPERIMENT_NAMES:
        from detkit.engine import experiment

        return getattr(experiment, name)
    raise AttributeError(f"module 'detkit.engine' has no attribute {name!r}")


__all__ = [
    "ClassificationEvaluator",
    "ClassificationTask",
    "DistInfo",
    "Evaluator",
    "Experiment",
    "FreezeConfig",
    "Freezer",
    "NonFiniteLossError",
    "OptimConfig",
    "RunBuilder",
    "RunManager",
    "ScheduleConfig",
    "ShardSampler",
    "StopTraining",
    "Task",
    "Trainer",
    "atomic_save",
    "atomic_write_text",
    "build_experiment",
    "build_optimizer",
    "build_param_groups",
    "build_scheduler",
    "cleanup_distributed",
    "evaluate",
    "evaluate_checkpoint",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_main_process",
    "load_checkpoint",
    "resolve_device",
    "run_experiment",
    "save_checkpoint",
    "seed_everything",
    "seed_worker",
    "tune",
    "unwrap_model",
]
