"""Tests for create_classifier and the registry: head swap, output shapes, gradients, metadata, errors.

Large architectures are built on the meta device (no memory, no init cost); real forward passes use resnet18.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detkit.models import LinearHead, create_classifier, list_classifiers, param_stages
from detkit.models.registry import get_entry

TORCHVISION_NAMES = [
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
]  # fmt: skip


def test_registry_lists_every_torchvision_resnet() -> None:
    assert list_classifiers() == sorted(TORCHVISION_NAMES)


@pytest.mark.parametrize("name", TORCHVISION_NAMES)
def test_every_registered_model_gets_a_head_of_num_classes(name: str) -> None:
    with torch.device("meta"):
        model = create_classifier(name, 7, weights="none", dropout=0.1)
    expected_features = 512 if name in ("resnet18", "resnet34") else 2048
    assert isinstance(model.fc, LinearHead)
    assert (model.fc.in_features, model.fc.out_features) == (expected_features, 7)
    assert model.fc.dropout == pytest.approx(0.1)
    assert list(param_stages(model)) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert model.detkit_meta == {
        "name": name, "num_classes": 7, "weights": "none", "pretrained": False,
        "mean": None, "std": None, "input_size": None,
    }  # fmt: skip


def test_resnet18_forward_shape_and_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    model = create_classifier("resnet18", 4, weights="none")
    images = torch.randn(2, 3, 32, 32)
    logits = model(images)
    assert logits.shape == (2, 4)
    assert torch.isfinite(logits).all()
    logits.logsumexp(dim=1).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []


def test_timm_model_head_is_reset_with_dropout() -> None:
    model = create_classifier("timm:test_resnet", 3, weights="none", dropout=0.25)
    assert model.get_classifier().out_features == 3
    assert model.drop_rate == pytest.approx(0.25)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert model.detkit_meta["name"] == "timm:test_resnet"
    assert model.detkit_meta["pretrained"] is False


def test_linear_head_applies_dropout_only_in_training_and_keeps_linear_keys() -> None:
    torch.manual_seed(0)
    head = LinearHead(16, 3, dropout=0.5)
    x = torch.randn(64, 16)
    head.eval()
    torch.testing.assert_close(head(x), x @ head.weight.T + head.bias)
    head.train()
    assert not torch.allclose(head(x), x @ head.weight.T + head.bias)
    assert set(head.state_dict()) == {"weight", "bias"}
    assert isinstance(head, nn.Linear)


def test_head_without_dropout_is_exactly_linear_in_training() -> None:
    head = LinearHead(8, 2, dropout=0.0).train()
    x = torch.randn(5, 8)
    torch.testing.assert_close(head(x), x @ head.weight.T + head.bias)


def test_unknown_names_list_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"'resnet19'.*Did you mean 'resnet18'.*resnet34.*timm:NAME"):
        create_classifier("resnet19", 3, weights="none")
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet10'.*resnet10t"):
        create_classifier("timm:resnet10", 3, weights="none")
    with pytest.raises(ValueError, match="Valid names"):
        get_entry("vgg16")


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"num_classes": 0}, ValueError, "num_classes must be an int >= 1, got 0"),
        ({"num_classes": 2.5}, ValueError, "num_classes"),
        ({"dropout": 1.0}, ValueError, r"dropout must be in \[0, 1\), got 1.0"),
        ({"weights": "imagenet21k"}, FileNotFoundError, "weights must be one of .*'imagenet21k'"),
        ({"weights": 3}, TypeError, "weights must be"),
    ],
)
def test_invalid_arguments_raise_with_the_value(kwargs: dict, error: type, pattern: str) -> None:
    args = {"name": "resnet18", "num_classes": 3, "weights": "none", **kwargs}
    with pytest.raises(error, match=pattern):
        create_classifier(**args)
