"""Training throughput: detkit Trainer vs a hand-written loop, and albumentations+OpenCV vs torchvision/PIL transforms.

Both loops train the same model from the same weights on the same DataLoader (same data, transforms and
batch); epochs alternate between them and the medians are compared (goal: Trainer overhead <= 5%). The
transform benchmark reads and augments the same files one by one on one thread: the detkit train
pipeline (OpenCV decode + albumentations) against its torchvision.transforms equivalent on PIL images
(goal: >= 1.5x faster). Without --data, a small shapes set is generated in a temporary directory.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

OVERHEAD_GOAL = 0.05
TRANSFORM_GOAL = 1.5


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None,
                        help="ImageFolder root with train/ (default: generate a shapes set in a temp dir)")
    parser.add_argument("--images", type=int, default=384, help="train images to generate without --data")
    parser.add_argument("--model", default="resnet18", help="architecture for the training loops")
    parser.add_argument("--img-size", type=int, default=64, help="network input side in pixels")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per loop (after one warm-up each)")
    parser.add_argument("--transform-images", type=int, default=300, help="files per transform measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats (a smoke run)")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.images, args.repeats, args.transform_images = min(args.images, 128), 1, min(args.transform_images, 64)
    with tempfile.TemporaryDirectory(prefix="detkit_bench_") as tmp:
        root = args.data or _generate(Path(tmp) / "shapes", args.images)
        _bench_loops(root, args)
        _bench_transforms(root, args)
    return 0


def _generate(out: Path, n_train: int) -> Path:
    from detkit.data.synthetic import make_shapes_classification

    make_shapes_classification(out, n_train=n_train, n_val=12, size=128, seed=0)
    return out


# ----------------------------------------------------------------------------- trainer vs plain loop


def _plain_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader) -> tuple[int, float]:
    """The loop a user would write by hand; returns (images, wall seconds)."""
    model.train()
    seen, running_loss = 0, 0.0
    start = time.perf_counter()
    for images, targets, _paths in loader:
        loss = F.cross_entropy(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        seen += images.shape[0]
    return seen, time.perf_counter() - start


def _bench_loops(root: Path, args: argparse.Namespace) -> None:
    from detkit.config import DataConfig, TrainConfig
    from detkit.data.classification import ImageFolderDataset
    from detkit.data.transforms import build_classification_transforms
    from detkit.engine.loaders import build_loader
    from detkit.engine.optim import OptimConfig, build_optimizer
    from detkit.engine.schedule import ScheduleConfig, build_scheduler
    from detkit.engine.tasks import ClassificationTask
    from detkit.engine.trainer import Trainer
    from detkit.models import create_classifier

    dataset = ImageFolderDataset(root, "train")
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    dataset.transform = build_classification_transforms(True, args.img_size, mean, std)
    task = ClassificationTask(dataset.classes)
    data_cfg = DataConfig(root=str(root), img_size=args.img_size, batch_size=args.batch_size, workers=args.workers)
    loader = build_loader(dataset, task, data_cfg, train=True, device=torch.device("cpu"))

    torch.manual_seed(0)
    plain_model = create_classifier(args.model, len(dataset.classes), weights="none")
    trainer_model = copy.deepcopy(plain_model)
    plain_opt = torch.optim.SGD(plain_model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    optim_cfg = OptimConfig(lr=0.01, head_lr_mult=1.0, no_decay_norm_bias=False)
    trainer_opt = build_optimizer(trainer_model, optim_cfg)
    epochs = args.repeats + 1
    scheduler = build_scheduler(trainer_opt, ScheduleConfig(name="constant", warmup_epochs=0.0), epochs, len(loader))
    with tempfile.TemporaryDirectory(prefix="detkit_bench_run_") as out:
        cfg = TrainConfig(epochs=epochs, device="cpu", output=out, progress=False, tensorboard=False)
        trainer = Trainer(trainer_model, task, trainer_opt, loader, None, cfg=cfg, scheduler=scheduler)
        plain, detkit, plain_cpu, detkit_cpu = [], [], [], []
        for epoch in range(1, epochs + 1):  # epoch 1 warms both up and is not counted
            cpu = time.process_time()
            n, seconds = _plain_epoch(plain_model, plain_opt, loader)
            cpu_plain = time.process_time() - cpu
            cpu = time.process_time()
            metrics = trainer.train_one_epoch(epoch)
            cpu_detkit = time.process_time() - cpu
            if epoch > 1:
                plain.append(n / seconds)
                detkit.append(metrics["images_per_s"])
                # CPU time of this process (all its threads; not the loader workers, the same for both):
                # far less sensitive than wall time to other programs sharing the machine
                plain_cpu.append(cpu_plain / n * 1000)
                detkit_cpu.append(cpu_detkit / n * 1000)
    plain_ips, detkit_ips = statistics.median(plain), statistics.median(detkit)
    overhead = plain_ips / detkit_ips - 1.0
    cpu_overhead = statistics.median(detkit_cpu) / statistics.median(plain_cpu) - 1.0
    print(f"train loop: {args.model}, {args.img_size} px, batch {args.batch_size}, {len(dataset)} images, "
          f"{args.workers} workers, {torch.get_num_threads()} threads; median of {args.repeats} epoch(s) each")
    print(f"  plain PyTorch loop   {plain_ips:8.1f} img/s   {statistics.median(plain_cpu):6.2f} CPU ms/img"
          f"   (epochs: {_fmt(plain)} img/s)")
    print(f"  detkit Trainer       {detkit_ips:8.1f} img/s   {statistics.median(detkit_cpu):6.2f} CPU ms/img"
          f"   (epochs: {_fmt(detkit)} img/s)")
    verdict = "ok" if overhead <= OVERHEAD_GOAL else "MISSED"
    print(f"  trainer overhead     {overhead * 100:+7.1f} %  wall, {cpu_overhead * 100:+.1f} % CPU time;"
          f"   goal <= {OVERHEAD_GOAL * 100:.0f}% (wall): {verdict}")


# ----------------------------------------------------------------------------- transform throughput


def _torchvision_pipeline(img_size: int, mean, std, aug):
    """torchvision.transforms (PIL) equivalent of detkit's train pipeline for the same ClassificationAugment."""
    import torchvision.transforms as T

    sigma_max = aug.blur_sigma[1]
    steps = [T.RandomResizedCrop(img_size, scale=tuple(aug.scale), ratio=tuple(aug.ratio), antialias=True)]
    if aug.hflip_p > 0:
        steps.append(T.RandomHorizontalFlip(aug.hflip_p))
    if aug.vflip_p > 0:
        steps.append(T.RandomVerticalFlip(aug.vflip_p))
    if aug.affine_p > 0:
        affine = T.RandomAffine(degrees=aug.rotate, translate=(aug.translate, aug.translate), shear=aug.shear)
        steps.append(T.RandomApply([affine], p=aug.affine_p))
    if aug.color_jitter_p > 0:
        jitter = T.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue)
        steps.append(T.RandomApply([jitter], p=aug.color_jitter_p))
    if aug.blur_p > 0:
        kernel = 2 * int(3 * sigma_max + 0.5) + 1
        steps.append(T.RandomApply([T.GaussianBlur(kernel, sigma=tuple(aug.blur_sigma))], p=aug.blur_p))
    steps.append(T.ToTensor())
    if aug.noise_p > 0:
        low, high = aug.noise_std
        steps.append(T.RandomApply([_AddNoise(low, high)], p=aug.noise_p))
    steps.append(T.Normalize(mean, std))
    if aug.dropout_p > 0:
        area = (aug.dropout_size[0] ** 2, aug.dropout_size[1] ** 2)
        steps.append(T.RandomErasing(p=aug.dropout_p, scale=area, value=0.0))
    return T.Compose(steps)


class _AddNoise:
    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        std = self.low + (self.high - self.low) * float(torch.rand(()))
        return (x + torch.randn_like(x) * std).clamp_(0.0, 1.0)


def _bench_transforms(root: Path, args: argparse.Namespace) -> None:
    import cv2
    from PIL import Image

    from detkit.data.images import is_image_file, read_image
    from detkit.data.transforms import ClassificationAugment, build_classification_transforms

    files = sorted(p for p in (root / "train").rglob("*") if is_image_file(p))[: args.transform_images]
    mean, std, aug = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), ClassificationAugment()
    ours = build_classification_transforms(True, args.img_size, mean, std, aug)
    theirs = _torchvision_pipeline(args.img_size, mean, std, aug)
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # one image at a time on one core, as in one DataLoader worker
    try:
        def detkit_one(path):
            return ours(image=read_image(path))["image"]

        def torchvision_one(path):
            with Image.open(path) as im:
                return theirs(im.convert("RGB"))

        rates = {"albumentations+cv2": [], "torchvision on PIL": []}
        for _ in range(max(args.repeats, 1)):
            for name, fn in (("torchvision on PIL", torchvision_one), ("albumentations+cv2", detkit_one)):
                start = time.perf_counter()
                for path in files:
                    fn(path)
                rates[name].append(len(files) / (time.perf_counter() - start))
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)
    tv, ab = statistics.median(rates["torchvision on PIL"]), statistics.median(rates["albumentations+cv2"])
    print(f"train transforms (read + augment + normalise): {len(files)} files, {args.img_size} px, 1 thread")
    print(f"  torchvision on PIL   {tv:8.1f} img/s")
    print(f"  albumentations+cv2   {ab:8.1f} img/s")
    verdict = "ok" if ab / tv >= TRANSFORM_GOAL else "MISSED"
    print(f"  speed-up             {ab / tv:8.2f} x     goal >= {TRANSFORM_GOAL}x: {verdict}")


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)
