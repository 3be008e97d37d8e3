"""Tasks of the one trainer, each registered under its config name: ``classify`` and ``detect``.

``get_task(cfg.task)`` gives the class; a new task subclasses :class:`Task` and registers with ``@register_task``.
"""

from detkit.engine.tasks.base import Batch, Task, get_task, list_tasks, register_task
from detkit.engine.tasks.classification import ClassificationTask
from detkit.engine.tasks.detection import DetectionSplit, DetectionTask
from detkit.eval.classification import ClassificationEvaluator
from detkit.eval.evaluator import Evaluator

__all__ = [
    "Batch",
    "ClassificationEvaluator",
    "ClassificationTask",
    "DetectionSplit",
    "DetectionTask",
    "Evaluator",
    "Task",
    "get_task",
    "list_tasks",
    "register_task",
]
