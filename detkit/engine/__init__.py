"""Training engine: the one trainer for every task, the task registry, optimiser groups, schedules and freezing.

Also checkpoints, distributed helpers, loaders, experiments built from a config, checkpoint evaluation and grids.
"""

from detkit.engine.checkpoint import atomic_save, load_checkpoint, save_checkpoint
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
from detkit.engine.evaluation import evaluate_checkpoint
from detkit.engine.experiment import (
    Experiment,
    build_experiment,
    build_task,
    run_experiment,
)
from detkit.engine.freeze import FreezeConfig, Freezer
from detkit.engine.loaders import build_loader
from detkit.engine.optim import OptimConfig, build_optimizer, build_param_groups
from detkit.engine.runs import RunBuilder, RunManager
from detkit.engine.schedule import ScheduleConfig, build_scheduler
from detkit.engine.tasks import (
    ClassificationEvaluator,
    ClassificationTask,
    DetectionTask,
    Evaluator,
    Task,
    get_task,
    list_tasks,
    register_task,
)
from detkit.engine.trainer import (
    StopTraining,
    Trainer,
    evaluate,
    seed_everything,
    seed_worker,
)
from detkit.engine.tune import tune
from detkit.errors import NonFiniteLossError

__all__ = [
    "ClassificationEvaluator",
    "ClassificationTask",
    "DetectionTask",
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
    "build_experiment",
    "build_loader",
    "build_optimizer",
    "build_param_groups",
    "build_scheduler",
    "build_task",
    "cleanup_distributed",
    "evaluate",
    "evaluate_checkpoint",
    "get_rank",
    "get_task",
    "get_world_size",
    "init_distributed",
    "is_main_process",
    "list_tasks",
    "load_checkpoint",
    "register_task",
    "resolve_device",
    "run_experiment",
    "save_checkpoint",
    "seed_everything",
    "seed_worker",
    "tune",
    "unwrap_model",
]
