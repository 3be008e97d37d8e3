"""Tests for param_stages: names and order per model family, every parameter exactly once, wrappers, errors.

Uses resnet18 on the meta device and timm's tiny test models, so no weights are initialised for real.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detkit.models import create_classifier, param_stages, unwrap_model
from detkit.models.stages import head_prefixes


def _assert_partition(model: nn.Module, stages: dict) -> None:
    ids = [id(p) for params in stages.values() for _, p in params]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}


def test_torchvision_resnet_stages_in_input_to_output_order() -> None:
    with torch.device("meta"):
        model = create_classifier("resnet18", 4, weights="none")
    stages = param_stages(model)
    assert list(stages) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert [n for n, _ in stages["stem"]] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert [n for n, _ in stages["head"]] == ["fc.weight", "fc.bias"]
    assert all(n.startswith("layer3.") for n, _ in stages["layer3"])
    _assert_partition(model, stages)
    assert head_prefixes(model) == ("fc.",)


@pytest.mark.parametrize("name", ["test_resnet", "test_vit", "test_convnext"])
def test_timm_models_use_their_coarse_groups_with_the_classifier_as_head(name: str) -> None:
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=3)
    stages = param_stages(model)
    assert list(stages)[0] == "stem" and list(stages)[-1] == "head"
    assert {id(p) for _, p in stages["head"]} == {id(p) for p in model.get_classifier().parameters()}
    _assert_partition(model, stages)
    coarse_groups = timm.models.group_parameters(model, model.group_matcher(coarse=True))
    # timm's groups minus the head-only group: each group maps onto one detkit stage, in the same order.
    body = [names for names in coarse_groups.values() if not all(n.startswith(head_prefixes(model)) for n in names)]
    assert len(stages) - 1 == len(body)


def test_timm_resnet_stage_names() -> None:
    model = create_classifier("timm:test_resnet", 3, weights="none")
    assert list(param_stages(model)) == ["stem", "stage1", "stage2", "stage3", "stage4", "head"]


def test_model_with_detkit_stages_method_is_taken_at_its_word() -> None:
    class TwoPart(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Linear(4, 4)
            self.extras = nn.Linear(4, 4)
            self.predictor = nn.Linear(4, 2)

        def detkit_stages(self) -> dict:
            return {
                "backbone": list(self.features.named_parameters(prefix="features")),
                "extras": list(self.extras.named_parameters(prefix="extras")),
                "head": list(self.predictor.named_parameters(prefix="predictor")),
            }

    model = TwoPart()
    assert list(param_stages(model)) == ["backbone", "extras", "head"]


def test_detkit_stages_that_miss_or_repeat_a_parameter_are_rejected() -> None:
    class Missing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.fc = nn.Linear(2, 2), nn.Linear(2, 2)

        def detkit_stages(self) -> dict:
            return {"head": list(self.fc.named_parameters(prefix="fc"))}

    with pytest.raises(ValueError, match=r"2 parameters of Missing are in no stage.*a\.weight"):
        param_stages(Missing())

    class Twice(Missing):
        def detkit_stages(self) -> dict:
            both = list(self.named_parameters())
            return {"body": both, "head": list(self.fc.named_parameters(prefix="fc"))}

    with pytest.raises(ValueError, match="appears in stage 'body' and again in 'head'"):
        param_stages(Twice())


def test_generic_model_uses_top_level_children_and_its_classifier() -> None:
    model = nn.Module()
    model.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model.pool = nn.AdaptiveAvgPool2d(1)  # no parameters: no stage
    model.classifier = nn.Linear(4, 2)
    stages = param_stages(model)
    assert list(stages) == ["features", "head"]
    _assert_partition(model, stages)


def test_model_without_a_recognisable_head_is_an_error_naming_the_fix() -> None:
    with pytest.raises(ValueError, match=r"cannot find the head of Sequential.*detkit_stages"):
        param_stages(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))


def test_wrappers_are_looked_through() -> None:
    model = create_classifier("timm:test_resnet", 3, weights="none")
    wrapped = nn.DataParallel(model)
    assert unwrap_model(wrapped) is model
    stages = param_stages(wrapped)
    assert [n for n, _ in stages["head"]] == ["fc.weight", "fc.bias"]  # no "module." prefix
