"""DetectionTask through the one Trainer: overfitting a few images, COCO evaluation in original pixels, artifacts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from detkit.config import DataConfig, TrainConfig
from detkit.data.det_synthetic import make_shapes_detection
from detkit.data.det_transforms import DetectionAugment
from detkit.engine.checkpoint import load_checkpoint
from detkit.config import DetectConfig
from detkit.engine.tasks import DetectionSplit, DetectionTask
from detkit.engine.loaders import build_loader
from detkit.engine.optim import OptimConfig, build_optimizer
from detkit.engine.schedule import ScheduleConfig, build_scheduler
from detkit.engine.trainer import Trainer, evaluate

CATEGORY_IDS = (3, 7, 11, 20)  # non-contiguous on purpose: ids must survive end to end
NORM = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def _data_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(root=str(root), batch_size=4, workers=0, scan_workers=1, **kw)


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP threads spin against other processes' work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("det_task") / "shapes"
    make_shapes_detection(root, n_train=4, n_val=3, min_size=64, max_size=80, seed=1, max_shapes=2,
                          empty_prob=0.0, ext=".png", category_ids=CATEGORY_IDS, workers=1)
    return root


class _Oracle(nn.Module):
    """Returns, in eval mode, the detections it was handed for the next call (ground truth as predictions)."""

    def __init__(self) -> None:
        super().__init__()
        self.next: list[dict[str, torch.Tensor]] = []

    def forward(self, images, targets=None):
        return self.next


def test_load_split_gives_task_contract_attributes_and_checks_val_categories(shapes_root, tmp_path):
    cfg = _data_cfg(shapes_root)
    train = DetectionTask.load_split(cfg, "train")
    assert isinstance(train, DetectionSplit)
    assert train.classes == ["circle", "square", "triangle", "star"] and train.cat_ids == list(CATEGORY_IDS)
    assert train.skipped == [] and [p for p, _ in train.samples] == [r.path for r in train.records]
    with pytest.raises(ValueError, match="same categories"):
        DetectionTask.load_split(cfg, "val", ["circle", "square"])
    # COCO 2017 layout: ROOT/<split>/ images, ROOT/annotations/instances_<split>.json
    coco_root = tmp_path / "coco"
    shutil.copytree(shapes_root / "val", coco_root / "val2017")
    (coco_root / "annotations").mkdir()
    (coco_root / "val2017" / "annotations.json").rename(coco_root / "annotations" / "instances_val2017.json")
    val = DetectionTask.load_split(_data_cfg(coco_root), "val2017", train.classes)
    assert len(val) == 3 and val.cat_ids == list(CATEGORY_IDS)
    with pytest.raises(FileNotFoundError, match=r"instances_\{test,testing\}\.json"):
        DetectionTask.load_split(_data_cfg(coco_root), "test")


def test_build_model_carries_classes_category_ids_and_thresholds(shapes_root):
    task = DetectionTask(["a", "b"], [5, 9], DetectConfig(score_thresh=0.2, nms_thresh=0.6, max_det=7))
    model = task.build_model("tiny_ssd", weights="none")
    assert model.detkit_meta["category_ids"] == [5, 9] and model.detkit_meta["classes"] == ["a", "b"]
    assert (model.score_thresh, model.nms_thresh, model.detections_per_img) == (0.2, 0.6, 7)
    assert model.num_classes == 2
    with pytest.raises(ValueError, match="model.dropout"):
        task.build_model("tiny_ssd", weights="none", dropout=0.1)
    with pytest.raises(ValueError, match="category_ids"):
        DetectionTask(["a", "b"], [5])
    with pytest.raises(ValueError, match="detect.resize_mode"):
        DetectConfig(resize_mode="crop")


def test_first_level_reaches_resnet_ssds_and_survives_a_checkpoint_round_trip(tmp_path):
    from detkit.engine.checkpoint import save_checkpoint
    from detkit.infer import Predictor

    detect = {"first_level": "layer2", "box_loss": "giou"}
    task = DetectionTask(["a", "b"], [5, 9], DetectConfig(**detect))
    model = task.build_model("resnet18_ssd", weights="none")
    assert model.first_level == "layer2" and model.loss_fn.box_loss == "giou"
    config = {"task": "detect", "model": {"name": "resnet18_ssd"}, "data": {"img_size": 64}, "detect": detect}
    ckpt = save_checkpoint(tmp_path / "best.pt", model=model, epoch=1, config=config, classes=["a", "b"],
                           normalization={"mean": [0.5] * 3, "std": [0.25] * 3})
    predictor = Predictor.from_checkpoint(ckpt)  # strict load: fails if the stride-8 level is not rebuilt
    assert predictor.model.first_level == "layer2"
    for name, value in model.state_dict().items():
        assert torch.equal(predictor.model.state_dict()[name].cpu(), value), name
    with pytest.raises(ValueError, match="detect.first_level"):
        DetectionTask(["a"], detect=DetectConfig(first_level="layer2")).build_model("tiny_ssd", weights="none")
    with pytest.raises(ValueError, match="detect.first_level"):
        DetectConfig(first_level="layer4")


def test_train_step_sums_every_loss_and_summary_averages(shapes_root):
    cfg = _data_cfg(shapes_root)
    train = DetectionTask.load_split(cfg, "train")
    task = DetectionTask(train.classes, train.cat_ids, DetectConfig(augment=DetectionAugment(crop_p=0, scale_p=0)))
    train.transform = task.build_transform(cfg, 64, NORM, train=True)
    images, targets, paths = task.move_batch(task.collate_fn([train[i] for i in range(2)]), torch.device("cpu"))
    model = task.build_model("tiny_ssd", weights="none").train()
    loss, sums = task.train_step(model, images, targets)
    assert loss.requires_grad and sums["count"].item() == 2
    assert set(sums) == {"loss", "loss_cls", "loss_box", "count"}
    out = task.summarize_train({k: float(v) for k, v in sums.items()})
    assert out["train_loss"] == pytest.approx(loss.item())
    assert out["train_loss"] == pytest.approx(out["train_loss_cls"] + out["train_loss_box"], rel=1e-5)


@pytest.mark.parametrize("resize_mode", ["letterbox", "resize"])
def test_evaluator_maps_predictions_back_to_original_pixels_and_category_ids(shapes_root, resize_mode):
    """Ground truth fed back as predictions in network pixels must score AP 1.0 on the original annotations."""
    cfg = _data_cfg(shapes_root)
    val = DetectionTask.load_split(cfg, "val")
    task = DetectionTask(val.classes, val.cat_ids, DetectConfig(resize_mode=resize_mode, grid_images=2),
                         eval_dataset=val)
    val.transform = task.build_transform(cfg, 96, NORM, train=False)
    evaluator = task.new_evaluator()
    oracle = _Oracle()
    for images, targets, paths in build_loader(val, task, cfg, train=False, device=torch.device("cpu")):
        oracle.next = [{"boxes": t["boxes"], "scores": torch.ones(len(t["labels"])), "labels": t["labels"]}
                       for t in targets]
        evaluator.update(oracle, images, targets, paths)
    evaluator.synchronize()
    metrics = evaluator.compute()
    assert metrics["val_map"] == pytest.approx(1.0) and metrics["val_map50"] == pytest.approx(1.0)
    assert {r["category_id"] for r in evaluator.coco.results} <= set(CATEGORY_IDS)
    assert metrics["pr_curves"].shape == (4, 101)
    grid = metrics["prediction_grid"]
    assert grid.dtype == torch.uint8 and grid.dim() == 3 and grid.shape[2] == 3
    # sensitivity check: the same boxes at a wrong scale (as if not mapped back exactly) do not score 1.0
    shifted = [dict(r, bbox=[v * 96 / 80 for v in r["bbox"]]) for r in evaluator.coco.results]
    evaluator.coco.results = shifted
    assert evaluator.compute()["val_map"] < 0.9


def test_overfit_few_images_through_trainer(shapes_root, tmp_path, one_thread):
    """tiny_ssd from scratch on 4 images: the loss falls and train-set mAP50 reaches >= 0.9 via the real Trainer."""
    torch.manual_seed(0)
    cfg = _data_cfg(shapes_root)
    train = DetectionTask.load_split(cfg, "train")
    train_eval = DetectionTask.load_split(cfg, "train", train.classes)
    aug = DetectionAugment(crop_p=0.0, scale_p=0.0, hflip_p=0.0, color_p=0.0)
    task = DetectionTask.from_config(type("Cfg", (), {"detect": DetectConfig(augment=aug, grid_images=2)})(),
                                     train.classes, train_set=train, val_set=train_eval)
    model = task.build_model("tiny_ssd", weights="none")
    train.transform = task.build_transform(cfg, 64, NORM, train=True)
    train_eval.transform = task.build_transform(cfg, 64, NORM, train=False)
    device = torch.device("cpu")
    train_loader = build_loader(train, task, cfg, train=True, device=device)
    val_loader = build_loader(train_eval, task, cfg, train=False, device=device)
    epochs = 30
    optimizer = build_optimizer(model, OptimConfig(name="adam", lr=5e-3, weight_decay=0.0, head_lr_mult=1.0))
    scheduler = build_scheduler(optimizer, ScheduleConfig(name="constant", warmup_epochs=0.0), epochs=epochs,
                                steps_per_epoch=len(train_loader))
    out = tmp_path / "run"
    train_cfg = TrainConfig(epochs=epochs, output=str(out), tensorboard=False, progress=False, eval_every=epochs)
    trainer = Trainer(model, task, optimizer, train_loader, val_loader, cfg=train_cfg, scheduler=scheduler,
                      device=device, classes=train.classes, normalization=NORM)
    result = trainer.fit()
    losses = [row["train_loss"] for row in result["epochs"]]
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3
    final = result["epochs"][-1]
    assert final["val_map50"] >= 0.9, final
    assert result["best"]["metric"] == "val_map"
    assert {"val_map", "val_map50", "val_map75", "val_loss", "train_loss_cls", "train_loss_box"} <= set(final)
    assert set(final["val_per_class_ap"]) == set(train.classes)
    for name in ("best.pt", "last.pt", "metrics.json", "pr_curves.png", "val_predictions.png"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "pr_curves").iterdir()) == sorted(f"{c}.png" for c in train.classes)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["epochs"][-1]["val_map50"] == pytest.approx(final["val_map50"])
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["model_meta"]["category_ids"] == list(CATEGORY_IDS) and ckpt["classes"] == train.classes
    # the trainer's generic evaluate() gives the same numbers for the final weights
    again = evaluate(model, task, val_loader, device)
    assert again["val_map50"] == pytest.approx(final["val_map50"])


def test_experiment_fits_default_boxes_to_the_train_boxes_and_logs_their_coverage(shapes_root, tmp_path, caplog,
                                                                                  one_thread):
    from detkit.config import load_config
    from detkit.engine.experiment import build_experiment

    caplog.set_level("INFO", logger="detkit")
    base = [f"data.root={shapes_root}", "task=detect", "model.name=resnet18_ssd", "model.weights=none",
            "data.img_size=64", "data.batch_size=2", "data.workers=0", "data.scan_workers=1", "train.device=cpu",
            f"train.output={tmp_path / 'run'}", "train.progress=false", "train.tensorboard=false"]
    experiment = build_experiment(load_config(None, base))
    detect = experiment.cfg.detect
    assert detect.first_level in ("layer2", "layer3") and detect.anchor_scales is not None
    generator = experiment.model.anchor_generator
    assert generator.scales == pytest.approx(detect.anchor_scales)  # the model trains with the fitted boxes
    assert [list(r) for r in generator.aspect_ratios] == detect.anchor_ratios
    coverage = experiment.summary["anchor_coverage"]
    assert 0.0 <= coverage <= 1.0 and experiment.summary["anchors_fitted"] is True
    assert any(r.message.startswith(f"anchor coverage {coverage:.3f}") for r in caplog.records)
    assert experiment.cfg.detect.augment.preset == "light" and experiment.policy.name == "scratch"
    # explicit keys win: no fit, SSD's own boxes, the level asked for; the coverage is still measured
    fixed = build_experiment(load_config(None, [*base, "detect.anchor_fit=false", "detect.first_level=layer3"]))
    assert fixed.cfg.detect.anchor_scales is None and fixed.cfg.detect.first_level == "layer3"
    assert fixed.summary["anchors_fitted"] is False and fixed.summary["anchor_coverage"] <= coverage + 1e-9
