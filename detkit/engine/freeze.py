"""Freezing backbone stages for the first epochs of fine-tuning, all at once or unfrozen stage by stage.

Frozen parameters get ``requires_grad=False`` and ``.grad=None``; their BatchNorm layers can be held in eval mode.
"""

from __future__ import annotations

import logging

from torch import nn

from detkit.config.sections import FreezeConfig
from detkit.models.stages import param_stages, unwrap_model

logger = logging.getLogger(__name__)


class Freezer:
    """Applies a ``FreezeConfig`` to a model at the start of each epoch.

    The trainer calls ``apply(epoch)`` right after ``model.train()``. Stages come from
    ``detkit.models.param_stages`` (``stem``, ``layer1`` … ``layer4``, ``head`` for ResNets); ``head`` is
    never frozen, nor are the other stages a model lists in ``detkit_new_stages`` (stages that start from random
    weights while the backbone is pretrained, such as an SSD's ``extras``). Parameters of frozen stages get ``requires_grad=False`` and ``.grad=None``, so an optimiser
    holding them skips them entirely (no update, no weight decay, no momentum); unfrozen stages get
    ``requires_grad=True``.

    Args:
        model: the network (DDP/compile wrappers are looked through).
        cfg: the schedule.

    Raises:
        ValueError: if ``backbone_epochs`` < 0 or ``stage_epochs`` < 1.
    """

    def __init__(self, model: nn.Module, cfg: FreezeConfig) -> None:
        if cfg.backbone_epochs < 0:
            raise ValueError(f"freeze.backbone_epochs must be >= 0, got {cfg.backbone_epochs}")
        if cfg.stage_epochs < 1:
            raise ValueError(f"freeze.stage_epochs must be >= 1, got {cfg.stage_epochs}")
        self.cfg = cfg
        model = unwrap_model(model)
        stages = param_stages(model)
        self.stage_names = list(stages)
        self._new_stages = {"head", *getattr(model, "detkit_new_stages", ())}
        self._params = {stage: [p for _, p in named] for stage, named in stages.items()}
        stage_by_param = {name: stage for stage, named in stages.items() for name, _ in named}
        self._norms: dict[str, list[nn.Module]] = {stage: [] for stage in stages}
        for name, module in model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                stage = _module_stage(name, stage_by_param)
                if stage is not None:
                    self._norms[stage].append(module)
        self._last: list[str] | None = None

    @property
    def backbone_stages(self) -> list[str]:
        """The stages that may be frozen, ordered input → output: every stage except ``head`` and the model's
        other new, randomly initialised stages (``model.detkit_new_stages``, e.g. an SSD's ``extras``)."""
        return [s for s in self.stage_names if s not in self._new_stages]

    def frozen_stages(self, epoch: int) -> list[str]:
        """Stages frozen during ``epoch`` (0-based), ordered input → output.

        All backbone stages while ``epoch < backbone_epochs``; afterwards none, or with ``gradual`` one more
        stage from the head backwards every ``stage_epochs`` epochs (the stage next to the head first).
        """
        backbone = self.backbone_stages
        if epoch < self.cfg.backbone_epochs:
            return backbone
        if not self.cfg.gradual:
            return []
        unfrozen = (epoch - self.cfg.backbone_epochs) // self.cfg.stage_epochs + 1
        return backbone[: max(0, len(backbone) - unfrozen)]

    def apply(self, epoch: int) -> list[str]:
        """Freeze and unfreeze stages for ``epoch``; returns the names of the frozen stages."""
        frozen = self.frozen_stages(epoch)
        for stage, params in self._params.items():
            trainable = stage not in frozen
            for param in params:
                param.requires_grad_(trainable)
                if not trainable:
                    param.grad = None
        if self.cfg.freeze_bn:
            for stage in frozen:
                for norm in self._norms[stage]:
                    norm.eval()
        if frozen != self._last:
            logger.info("epoch %d: frozen stages %s", epoch, frozen or "none")
            self._last = frozen
        return frozen


def _module_stage(module_name: str, stage_by_param: dict[str, str]) -> str | None:
    # The stage of the module's own parameters; for parameter-less modules (BatchNorm with affine=False)
    # the stage of the closest enclosing module whose parameters all lie in a single stage.
    prefix = module_name
    while True:
        stages = {s for n, s in stage_by_param.items() if n.startswith(prefix + ".")} if prefix else set()
        if len(stages) == 1:
            return stages.pop()
        if len(stages) > 1 or "." not in prefix:
            return None
        prefix = prefix.rsplit(".", 1)[0]
