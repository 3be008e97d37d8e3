"""`tools/bench.py detect-train`: its runners carry the settings they claim, and one tiny comparison runs."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from benchmarks import detect_train  # noqa: E402
from detkit.config import load_config  # noqa: E402


def _is_channels_last(model: torch.nn.Module) -> bool:
    """Every conv weight channels-last (1x1 kernels are both layouts at once) and not all of them NCHW too."""
    weights = [p for p in model.parameters() if p.dim() == 4]
    return all(p.is_contiguous(memory_format=torch.channels_last) for p in weights) and not all(
        p.is_contiguous() for p in weights)


@pytest.mark.parametrize("channels_last", [True, False])
def test_runners_take_the_recipes_memory_format_and_optimiser(channels_last):
    recipe = load_config(detect_train.RECIPE)
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, channels_last=channels_last))
    runs = detect_train._runners(128, "layer2", recipe)
    assert set(runs) == {"detkit", "detkit as trained", "torchvision", "torchvision with the recipe's settings"}
    trained, theirs_set = runs["detkit as trained"], runs["torchvision with the recipe's settings"]
    assert (trained.channels_last, theirs_set.channels_last) == (channels_last, channels_last)
    assert _is_channels_last(trained.model) == channels_last
    assert _is_channels_last(theirs_set.model) == channels_last
    assert not _is_channels_last(runs["detkit"].model) and not _is_channels_last(runs["torchvision"].model)
    # the trainer's optimiser from the recipe's optim section; torchvision's copy gets the same class, fused alike
    assert type(trained.optimizer) is type(theirs_set.optimizer) and isinstance(trained.optimizer, torch.optim.AdamW)
    assert max(group["lr"] for group in trained.optimizer.param_groups) == pytest.approx(recipe.optim.lr)
    assert bool(trained.optimizer.defaults.get("fused")) == bool(theirs_set.optimizer.defaults.get("fused"))
    assert not runs["detkit"].optimizer.defaults.get("fused") and not runs["torchvision"].optimizer.defaults.get("fused")
    # every copy starts from the same weights as its original
    for original, copy in (("detkit", "detkit as trained"), ("torchvision", "torchvision with the recipe's settings")):
        a, b = runs[original].model.state_dict(), runs[copy].model.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_one_tiny_comparison_steps_every_runner_and_reports_the_three_ratios(tmp_path):
    root = detect_train._generate(tmp_path / "shapes", 4)
    batches = detect_train._fixed_batches(root, 128, 2, count=1)
    images, targets = batches[0]
    assert images.shape == (2, 3, 128, 128) and len(targets) == 2
    row = detect_train._compare(batches, 128, "layer2", threads=1, amp=False,
                               recipe=load_config(detect_train.RECIPE), repeats=1, warmup=0)
    for name in ("detkit", "detkit as trained", "torchvision", "torchvision with the recipe's settings"):
        assert row[name]["images_per_s"] > 0 and len(row[name]["step_s"]) == 1
    assert row["ratio_as_trained"] == pytest.approx(row["detkit as trained"]["images_per_s"]
                                                    / row["torchvision"]["images_per_s"])
    assert row["ratio_same_settings"] == pytest.approx(
        row["detkit as trained"]["images_per_s"] / row["torchvision with the recipe's settings"]["images_per_s"])
    assert row["trainer_channels_last"] is load_config(detect_train.RECIPE).train.channels_last
    params = row["params"]
    assert params["detkit"] == params["detkit as trained"]
    assert params["torchvision"] == params["torchvision with the recipe's settings"]
