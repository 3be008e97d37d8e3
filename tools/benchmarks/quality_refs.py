"""The reference trainings of `tools/bench.py quality`: the loops a user writes with torchvision alone.

``plain_classify`` is the ~30-line ImageFolder + resnet18 + Adam loop; ``torchvision_ssd`` trains torchvision's
own SSD machinery (``SSD``, ``DefaultBoxGenerator``, ``SSDHead``) on a resnet18 trunk with the feature levels of
detkit's ``resnet18_ssd`` and scores it with pycocotools. Neither imports detkit.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import statistics
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Budget:
    """What every implementation compared on one set trains with.

    Attributes:
        epochs: passes over the train split.
        img_size: square network input side in pixels.
        batch_size: images per optimiser step.
        workers: DataLoader worker processes.
        seed: torch seed of initialisation and data order.
    """

    epochs: int
    img_size: int
    batch_size: int
    workers: int
    seed: int = 0


def _timed_epochs(train_epoch, evaluate, epochs: int) -> dict[str, Any]:
    """Run ``train_epoch() -> images`` and ``evaluate() -> metric`` per epoch; best metric, img/s, per-epoch values."""
    start, rates, values = time.perf_counter(), [], []
    for epoch in range(1, epochs + 1):
        t = time.perf_counter()
        images = train_epoch()
        rates.append(images / (time.perf_counter() - t))
        values.append(float(evaluate()))
        print(f"      epoch {epoch}/{epochs}: {values[-1]:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    best = max(range(len(values)), key=lambda i: values[i])
    return {"value": values[best], "best_epoch": best + 1, "last": values[-1], "per_epoch": values,
            "images_per_s": statistics.median(rates), "wall_s": time.perf_counter() - start}


# ----------------------------------------------------------------------------------------- classification


def plain_classify(root: Path, budget: Budget) -> dict[str, Any]:
    """The plain PyTorch loop: ImageFolder, Resize + ToTensor + Normalize, resnet18 from random init, Adam 1e-3.

    No schedule, no augmentation; validation accuracy after every epoch.

    Args:
        root: ImageFolder root with ``train/<class>/*`` and ``val/<class>/*``.
        budget: epochs, input size, batch, workers and seed.

    Returns:
        ``{"value": best val accuracy, "best_epoch", "last", "per_epoch", "images_per_s", "wall_s"}``.
    """
    import torchvision
    from torchvision import transforms as T

    torch.manual_seed(budget.seed)
    tf = T.Compose([T.Resize((budget.img_size, budget.img_size)), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    train_set = torchvision.datasets.ImageFolder(str(root / "train"), tf)
    val_set = torchvision.datasets.ImageFolder(str(root / "val"), tf)
    train_loader = torch.utils.data.DataLoader(train_set, budget.batch_size, shuffle=True, num_workers=budget.workers)
    val_loader = torch.utils.data.DataLoader(val_set, 2 * budget.batch_size, num_workers=budget.workers)
    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Linear(model.fc.in_features, len(train_set.classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def train_epoch() -> int:
        model.train()
        for images, labels in train_loader:
            loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return len(train_set)

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in val_loader)
        return correct / len(val_set)

    return _timed_epochs(train_epoch, evaluate, budget.epochs)


# ------------------------------------------------------------------------------------------------ detection


class CocoFolder(torch.utils.data.Dataset):
    """``split/annotations.json`` with its images: ``(image Tensor[3, H, W] in [0, 1], target)`` pairs.

    ``target``: ``boxes`` ``Tensor[K, 4]`` ``(x1, y1, x2, y2)`` pixels, ``labels`` ``Tensor[K]`` in ``1..C``
    (0 is torchvision's background), ``image_id``.
    """

    def __init__(self, split_dir: Path) -> None:
        self.dir = Path(split_dir)
        self.annotation_file = self.dir / "annotations.json"
        coco = json.loads(self.annotation_file.read_text(encoding="utf-8"))
        self.category_ids = sorted(c["id"] for c in coco["categories"])
        label = {cid: k + 1 for k, cid in enumerate(self.category_ids)}
        self.images = sorted(coco["images"], key=lambda im: im["id"])
        self.boxes: dict[int, list[tuple[list[float], int]]] = {im["id"]: [] for im in self.images}
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            if not a.get("iscrowd") and w > 0 and h > 0:
                self.boxes[a["image_id"]].append(([x, y, x + w, y + h], label[a["category_id"]]))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Any]]:
        from torchvision.io import ImageReadMode, read_image

        info = self.images[i]
        image = read_image(str(self.dir / info["file_name"]), ImageReadMode.RGB).float() / 255.0
        objects = self.boxes[info["id"]]
        boxes = torch.tensor([b for b, _ in objects], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([c for _, c in objects], dtype=torch.int64)
        return image, {"boxes": boxes, "labels": labels, "image_id": info["id"]}


class ResNetTrunk(nn.Module):
    """resnet18 without its classifier, returning [layer2,] layer3, layer4 and 4 extra down-sampling blocks.

    The levels and channels of detkit's ``resnet18_ssd`` (first level layer3, or layer2 with ``first_level=
    "layer2"``; extra channels 512, 256, 256, 256, each extra block conv1x1 -> GroupNorm -> ReLU -> conv3x3 stride 2
    -> GroupNorm -> ReLU). Also the reference trunk of ``tools/bench.py detect-train``.

    Shapes: ``forward(Tensor[B, 3, H, W]) -> OrderedDict`` of the maps, finest first (strides [8,] 16, 32, 64, ...,
    1 x 1 at least).
    """

    extra_channels = (512, 256, 256, 256)

    def __init__(self, first_level: str = "layer3") -> None:
        import torchvision

        super().__init__()
        r = torchvision.models.resnet18(weights=None)
        self.body = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2)
        self.layer3, self.layer4 = r.layer3, r.layer4
        self.with_layer2 = first_level == "layer2"
        channels, extras = ([128] if self.with_layer2 else []) + [256, 512], []
        for out in self.extra_channels:
            mid = out // 2
            block = nn.Sequential(
                nn.Conv2d(channels[-1], mid, 1, bias=False), nn.GroupNorm(math.gcd(32, mid), mid), nn.ReLU(inplace=True),
                nn.Conv2d(mid, out, 3, stride=2, padding=1, bias=False), nn.GroupNorm(math.gcd(32, out), out),
                nn.ReLU(inplace=True),
            )  # fmt: skip
            for m in block.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            extras.append(block)
            channels.append(out)
        self.extras = nn.ModuleList(extras)
        self.out_channels = channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        x = self.body(x)
        features = [x] if self.with_layer2 else []
        x = self.layer3(x)
        features.append(x)
        x = self.layer4(x)
        features.append(x)
        for block in self.extras:
            x = block(x)
            features.append(x)
        return OrderedDict((str(i), f) for i, f in enumerate(features))


def build_torchvision_ssd(num_classes: int, img_size: int) -> nn.Module:
    """torchvision ``SSD`` on :class:`ResNetTrunk`, with detkit's default boxes (SSD's ratio pattern, scales 0.1-0.9).

    Args:
        num_classes: object classes C (the model has C + 1 outputs, 0 = background).
        img_size: the fixed square input side; ``SSD``'s transform resizes every image to it.
    """
    from torchvision.models.detection.ssd import SSD, DefaultBoxGenerator, SSDHead

    trunk = ResNetTrunk()
    levels = len(trunk.out_channels)
    ratios = [[2] if i == 0 or i >= levels - 2 else [2, 3] for i in range(levels)]  # 4 or 6 boxes per cell
    anchors = DefaultBoxGenerator(ratios, min_ratio=0.1, max_ratio=0.9)
    head = SSDHead(trunk.out_channels, anchors.num_anchors_per_location(), num_classes + 1)
    return SSD(trunk, anchors, (img_size, img_size), num_classes + 1, image_mean=list(IMAGENET_MEAN),
               image_std=list(IMAGENET_STD), head=head, detections_per_img=100)


def _ssd_augment(mean: tuple[float, ...]):
    """torchvision's SSD reference augmentation (photometric distortion, zoom-out, IoU crop, flip) on tensors."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    pipeline = v2.Compose([v2.RandomPhotometricDistort(), v2.RandomZoomOut(fill=list(mean)), v2.RandomIoUCrop(),
                           v2.RandomHorizontalFlip(), v2.SanitizeBoundingBoxes()])

    def apply(image: Tensor, target: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=tuple(image.shape[-2:]))
        image, out = pipeline(tv_tensors.Image(image), {"boxes": boxes, "labels": target["labels"]})
        return image.as_subclass(Tensor), {**target, "boxes": out["boxes"].as_subclass(Tensor), "labels": out["labels"]}

    return apply


@torch.no_grad()
def coco_map50(model: nn.Module, dataset: CocoFolder, batch_size: int) -> float:
    """Val mAP at IoU 0.5 from pycocotools (all areas, 100 detections per image)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    model.eval()
    results = []
    for start in range(0, len(dataset), batch_size):
        batch = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        for (_, target), det in zip(batch, model([image for image, _ in batch])):
            for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
                x1, y1, x2, y2 = box
                results.append({"image_id": target["image_id"], "category_id": dataset.category_ids[label - 1],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    if not results:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO(str(dataset.annotation_file))
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[1])


def torchvision_ssd(root: Path, budget: Budget, lr: float = 0.01, augment: str = "none") -> dict[str, Any]:
    """Train torchvision's SSD (resnet18 trunk, random init) as its reference recipe does, scaled to the budget.

    Recipe (torchvision ``references/detection`` for SSD, scaled): SGD momentum 0.9, weight decay 5e-4,
    ``lr`` with a linear warm-up from 0.001 x over the first epoch (at most 1,000 steps), then x0.1 at 2/3
    and 11/12 of the epochs (the reference's 80 and 110 of 120). Validation mAP50 after every epoch.

    Args:
        root: COCO-layout root with ``train/`` and ``val/`` (``annotations.json`` beside the images).
        budget: epochs, input size, batch, workers and seed.
        lr: peak learning rate.
        augment: ``"none"`` or ``"ssd"`` (the reference's photometric + zoom-out + IoU-crop + flip).

    Returns:
        ``{"value": best val mAP50, "best_epoch", "last", "per_epoch", "images_per_s", "wall_s"}``.
    """
    if augment not in ("none", "ssd"):
        raise ValueError(f"augment must be 'none' or 'ssd', got {augment!r}")
    torch.manual_seed(budget.seed)
    train_set, val_set = CocoFolder(root / "train"), CocoFolder(root / "val")
    transform = _ssd_augment(IMAGENET_MEAN) if augment == "ssd" else None
    loader = torch.utils.data.DataLoader(
        train_set, budget.batch_size, shuffle=True, num_workers=budget.workers, drop_last=True,
        collate_fn=lambda batch: tuple(zip(*[transform(*b) if transform else b for b in batch])),
    )  # fmt: skip
    model = build_torchvision_ssd(len(train_set.category_ids), budget.img_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    warmup = min(1000, len(loader) - 1)
    milestones = [round(budget.epochs * 2 / 3) * len(loader), round(budget.epochs * 11 / 12) * len(loader)]

    def factor(step: int) -> float:
        ramp = 0.001 + (1 - 0.001) * step / warmup if step < warmup else 1.0
        return ramp * 0.1 ** sum(step >= m for m in milestones)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def train_epoch() -> int:
        model.train()
        seen = 0
        for images, targets in loader:
            losses = model(list(images), [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise RuntimeError(f"torchvision SSD: non-finite loss {losses} (lr {lr})")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(images)
        return seen

    return _timed_epochs(train_epoch, lambda: coco_map50(model, val_set, 2 * budget.batch_size), budget.epochs)
