"""Detection on the CPU: resnet18_ssd latency vs torchvision detectors, post-processing share, training img/s;
PyTorch / TorchScript / ONNX Runtime latency, video frames/s and tiled inference vs sahi (benchmarks/inference.py).

Latency: the same images (batch 1) through each detector in eval mode (random weights, same thread count);
median per-image milliseconds, and for resnet18_ssd the share spent in post-processing (decode, threshold,
top-k, NMS; goal <= 10%). Training: images/s of resnet18_ssd through the detkit Trainer on a generated
shapes detection set, and the data pipeline's share (time to iterate the DataLoader alone / epoch time).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import inference

POSTPROCESS_GOAL = 0.10
REFERENCES = ("torchvision:ssdlite320_mobilenet_v3_large", "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--img-size", type=int, default=320, help="latency: square input side in pixels")
    parser.add_argument("--images", type=int, default=10, help="latency: timed images per detector (after 2 warm-up)")
    parser.add_argument("--train-size", type=int, default=256, help="training: input side in pixels")
    parser.add_argument("--train-images", type=int, default=64, help="training: generated train images")
    parser.add_argument("--batch-size", type=int, default=16, help="training: images per batch")
    parser.add_argument("--workers", type=int, default=2, help="training: DataLoader worker processes")
    parser.add_argument("--epochs", type=int, default=2, help="training: timed epochs (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--skip-train", action="store_true", help="latency only")
    parser.add_argument("--quick", action="store_true", help="fewer images and epochs (a smoke run)")
    inference.add_args(parser)  # export latency, video frames/s, tiling vs sahi


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.images, args.train_images, args.epochs = min(args.images, 3), min(args.train_images, 16), 1
    _bench_latency(args)
    inference.run(args)
    if not args.skip_train:
        _bench_training(args)
    return 0


def _median_ms(fn, inputs: list[torch.Tensor]) -> float:
    times = []
    for i, x in enumerate(inputs):
        start = time.perf_counter()
        fn(x)
        if i >= 2:  # the first calls warm up allocators and kernels
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


@torch.no_grad()
def _bench_latency(args: argparse.Namespace) -> None:
    from detkit.models import create_detector

    torch.manual_seed(0)
    s = args.img_size
    inputs = [torch.randn(1, 3, s, s) for _ in range(args.images + 2)]
    print(f"latency per image: {s} px, batch 1, random weights, {torch.get_num_threads()} threads, "
          f"median of {args.images}")
    ssd = create_detector("resnet18_ssd", 4, weights="none", input_size=s).eval()
    ssd.score_thresh = 0.01  # the evaluation setting: many candidates reach NMS, the post-processing worst case
    total = _median_ms(ssd, inputs)
    outputs = [ssd.head_outputs(x) for x in inputs[:3]]
    post = _median_ms(lambda o: ssd.postprocess(*o, (s, s)), outputs * (len(inputs) // 3 + 1))
    print(f"  {'resnet18_ssd':<52} {total:8.1f} ms")
    verdict = "ok" if post / total <= POSTPROCESS_GOAL else "MISSED"
    print(f"    post-processing {post:.1f} ms = {post / total * 100:.1f} % of the latency "
          f"(goal <= {POSTPROCESS_GOAL * 100:.0f}%: {verdict})")
    for name in REFERENCES:
        model = create_detector(name, 4, weights="none").eval()
        model.score_thresh = 0.01
        ms = _median_ms(model, inputs)
        print(f"  {name:<52} {ms:8.1f} ms   (resnet18_ssd is {ms / total:.2f}x as fast)")


def _bench_training(args: argparse.Namespace) -> None:
    from detkit.config import DataConfig, TrainConfig
    from detkit.data.det_synthetic import make_shapes_detection
    from detkit.engine.tasks import DetectionTask
    from detkit.engine.loaders import build_loader
    from detkit.engine.optim import OptimConfig, build_optimizer
    from detkit.engine.trainer import Trainer

    norm = {"mean": [0.5] * 3, "std": [0.25] * 3}
    with tempfile.TemporaryDirectory(prefix="detkit_bench_det_") as tmp:
        root = Path(tmp) / "shapes"
        make_shapes_detection(root, n_train=args.train_images, n_val=0, seed=0)
        data_cfg = DataConfig(root=str(root), batch_size=args.batch_size, workers=args.workers)
        dataset = DetectionTask.load_split(data_cfg, "train")
        task = DetectionTask(dataset.classes, dataset.cat_ids)
        dataset.transform = task.build_transform(data_cfg, args.train_size, norm, train=True)
        loader = build_loader(dataset, task, data_cfg, train=True, device=torch.device("cpu"))
        torch.manual_seed(0)
        model = task.build_model("resnet18_ssd", weights="none")
        optimizer = build_optimizer(model, OptimConfig(lr=0.01))
        epochs = args.epochs + 1
        cfg = TrainConfig(epochs=epochs, device="cpu", output=str(Path(tmp) / "run"), progress=False,
                          tensorboard=False)
        trainer = Trainer(model, task, optimizer, loader, None, cfg=cfg)
        rates, shares = [], []
        for epoch in range(1, epochs + 1):  # epoch 1 warms up and is not counted
            metrics = trainer.train_one_epoch(epoch)
            start = time.perf_counter()
            for _ in loader:
                pass
            data_s = time.perf_counter() - start
            if epoch > 1:
                rates.append(metrics["images_per_s"])
                shares.append(data_s / metrics["train_time_s"])
    print(f"training: resnet18_ssd, {args.train_size} px, batch {args.batch_size}, {args.train_images} images, "
          f"{args.workers} workers, {torch.get_num_threads()} threads; median of {args.epochs} epoch(s)")
    print(f"  {statistics.median(rates):8.2f} images/s; data pipeline alone takes "
          f"{statistics.median(shares) * 100:.1f} % of the epoch time (an upper bound on its share: workers "
          "overlap loading with compute)")
