"""The sections of an experiment config as plain dataclasses: data, model, optim, schedule, freeze, train, detect.

Each field is one key with its default and a one-line comment (the comments generate ``configs/README.md``).
This module imports no torch and no model code, so reading a config is cheap and never builds anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from detkit.config.augment import ClassificationAugment, DetectionAugment
from detkit.errors import ConfigError

__all__ = [
    "CACHE_MODES",
    "FIRST_LEVELS",
    "RESIZE_MODES",
    "TASKS",
    "DataConfig",
    "DetectConfig",
    "ExperimentConfig",
    "FreezeConfig",
    "ModelConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
]

#: the config's ``task`` values; each names a task class registered in ``detkit.engine.tasks``
TASKS = ("classify", "detect")
#: the finest feature level of a ResNet-SSD: layer2 (stride 8) or layer3 (stride 16)
FIRST_LEVELS = ("layer2", "layer3")
#: eval and inference geometry of detection inputs
RESIZE_MODES = ("letterbox", "resize")
#: ``data.cache`` values: read every image from disk each time, or decode each once into memory
CACHE_MODES = ("none", "ram")


@dataclass
class DataConfig:
    root: str = "data/shapes"  # dataset folder or file (YOLO data.yaml, COCO .json, .csv/.json list), read in its own layout: class folders or path,label lists (classify); COCO, YOLO or Pascal VOC (detect)
    train_split: str = "train"  # name of the split used for training (a folder, yaml key, list or annotation file of that name)
    val_split: str | None = "val"  # name of the split used for validation; val also finds valid or validation (null: no validation)
    img_size: int | None = None  # side of the square network input in pixels, train crop and eval centre crop (null: the pretrained weights' input size, else 224)
    batch_size: int = 32  # images per optimiser micro-batch and per process (DDP: per rank)
    eval_batch_size: int | None = None  # images per validation batch (null: 2 x batch_size)
    workers: int = 2  # DataLoader worker processes (0: load in the main process)
    pin_memory: bool = True  # page-locked host memory for faster copies (only used with a CUDA device)
    persistent_workers: bool = False  # keep DataLoader workers alive between epochs (needs workers > 0)
    prefetch_factor: int = 2  # batches loaded ahead by each worker (needs workers > 0)
    drop_last: bool = True  # drop the last incomplete training batch (avoids a BatchNorm batch of one)
    mean: list[float] | None = None  # per-channel normalisation mean in [0, 1] units; used only without pretrained weights (null: computed from the train set)
    std: list[float] | None = None  # per-channel normalisation std in [0, 1] units; same rule as mean
    stats_max_images: int = 500  # train images sampled to compute mean/std when they are needed
    scan: bool = True  # scan every image upfront and skip unreadable files (reported in the run summary)
    scan_workers: int | None = None  # threads for the upfront scan (null: CPU count)
    sampler: str = "shuffle"  # training order: shuffle (each image once per epoch) or balanced (images drawn with replacement, every class equally often)
    kfold: int | None = None  # K-fold cross-validation: split the train split into this many folds, validate on one (null: off; tools/kfold.py sets it)
    fold: int = 0  # with kfold: the fold validated on (0 .. kfold-1); the other folds train, val_split is not used
    augment: ClassificationAugment = field(default_factory=ClassificationAugment)  # train-time augmentation and eval resize
    # dataset layout: explicit keys win over the layout recognised under root (relative paths are under root)
    format: str = "auto"  # dataset format: auto (recognised), coco, yolo or voc (detection), folder or list (classification)
    train_images: str | None = None  # train images: a folder (YOLO: or a list file; classification without annotations: the class folders)
    train_annotations: str | None = None  # train annotations: a COCO .json, a YOLO labels folder, a VOC folder of XML files or a classification .csv/.json list
    val_images: str | None = None  # val images, as train_images
    val_annotations: str | None = None  # val annotations, as train_annotations
    # in-memory image cache (detkit.data.cache)
    cache: str = "none"  # none (read and decode every image from disk each time it is used) or ram (decode every train and val image once, before training, into one buffer the DataLoader workers share; augmentation stays per epoch)
    cache_max_gb: float = 4.0  # largest decoded size (RGB uint8, train + val) data.cache: ram may hold, in GB; a larger set is refused before anything is decoded

    def __post_init__(self) -> None:
        if self.img_size is not None and self.img_size < 1:
            raise ValueError(f"data.img_size: expected a positive number of pixels or null, got {self.img_size}")
        for name in ("batch_size", "prefetch_factor", "stats_max_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name}: expected an integer >= 1, got {getattr(self, name)}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ValueError(f"data.eval_batch_size: expected an integer >= 1 or null, got {self.eval_batch_size}")
        if self.workers < 0:
            raise ValueError(f"data.workers: expected >= 0, got {self.workers}")
        if self.cache not in CACHE_MODES:
            raise ValueError(f"data.cache: expected one of {', '.join(CACHE_MODES)}, got {self.cache!r}")
        if not self.cache_max_gb > 0:
            raise ValueError(f"data.cache_max_gb: expected a positive number of GB, got {self.cache_max_gb}")


@dataclass
class ModelConfig:
    name: str = "resnet18"  # classifiers: resnet18/34/50/101/152, wide_resnet50_2/101_2, resnext50_32x4d/101_32x8d/101_64x4d or timm:NAME; detectors (task detect): resnet18/34/50_ssd, tiny_ssd, torchvision:NAME (python -c "import detkit.models as m; print(m.list_detectors())")
    weights: str = "auto"  # imagenet (must be available), auto (imagenet if cached, else random init), none, or a weights file path
    dropout: float = 0.0  # dropout probability before the new classification head


@dataclass
class OptimConfig:
    """Optimiser and per-stage learning rates (``optim:`` section of a config)."""

    name: str | None = None  # one of sgd, adam, adamw, rmsprop, adagrad, adadelta (null: the start policy's: sgd fine-tuning, adamw from scratch)
    lr: float | str | None = None  # base learning rate of the backbone stages (null: the policy's for the optimiser; auto: the LR finder's suggestion)
    momentum: float = 0.9  # momentum for sgd and rmsprop
    nesterov: bool = False  # Nesterov momentum (sgd only; needs momentum > 0)
    weight_decay: float | None = None  # L2 penalty (decoupled for adamw) on weights that are not norm/bias (null: the policy's for the optimiser)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam/AdamW moment decay rates
    eps: float = 1e-8  # numerical epsilon of adam, adamw, rmsprop, adagrad, adadelta
    head_lr_mult: float | None = None  # head lr = lr * head_lr_mult (null: 10 fine-tuning, 1 from scratch; ignored for stages set by layer_decay/group_lrs)
    layer_decay: float | None = None  # if set, stage lr = lr * layer_decay ** (distance from head); head gets lr
    group_lrs: dict[str, float] | None = None  # explicit lr per stage name, e.g. {layer4: 0.01}; wins over the rest
    no_decay_norm_bias: bool = True  # no weight decay on normalisation-layer and bias parameters

    def __post_init__(self) -> None:
        if isinstance(self.lr, str) and self.lr != "auto":
            raise ValueError(f"optim.lr: expected a number, null or auto, got {self.lr!r}")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule (``schedule:`` section of a config)."""

    name: str = "cosine"  # one of cosine, onecycle, step, constant
    warmup_epochs: float = 1.0  # linear warmup length for cosine/step/constant (fractions allowed; onecycle: unused)
    warmup_start_ratio: float = 0.01  # lr factor at the first warmup step, rising linearly to 1
    min_lr_ratio: float = 0.01  # cosine: final lr as a fraction of each group's base lr
    step_epochs: tuple[float, ...] = (30.0, 60.0)  # step: epochs at which lr *= gamma
    gamma: float = 0.1  # step: multiplicative decay at each of step_epochs
    pct_start: float = 0.3  # onecycle: fraction of all steps spent rising to the peak lr
    div_factor: float = 25.0  # onecycle: start lr = base lr / div_factor
    final_div_factor: float = 1e4  # onecycle: final lr = base lr / (div_factor * final_div_factor)


@dataclass
class FreezeConfig:
    """Backbone freezing schedule (``freeze:`` section of a config)."""

    backbone_epochs: int = 0  # epochs at the start during which every stage except the head is frozen
    gradual: bool = False  # after backbone_epochs, unfreeze one stage at a time from the head backwards
    stage_epochs: int = 1  # gradual: epochs between unfreezing one stage and the next
    freeze_bn: bool = True  # BatchNorm layers of frozen stages stay in eval mode (running stats unchanged)


@dataclass
class TrainConfig:
    epochs: int = 10  # number of training epochs
    device: str = "auto"  # auto (first CUDA device if any, else CPU), cpu, cuda or cuda:N
    amp: bool = False  # automatic mixed precision (bfloat16 autocast on CPU; float16 + GradScaler or bfloat16 on CUDA)
    amp_dtype: str = "auto"  # autocast dtype: auto (bfloat16 on CPU, float16 on CUDA), float16 or bfloat16
    channels_last: bool = False  # channels-last memory format for the model and its inputs
    grad_clip: float | None = None  # clip the global gradient L2 norm to this value (null: no clipping)
    accumulate: int = 1  # micro-batches whose gradients are summed before each optimiser step
    label_smoothing: float = 0.0  # label smoothing of the classification cross-entropy loss
    seed: int = 0  # seed for torch, numpy, random, augmentation and DataLoader order
    deterministic: bool = False  # torch.use_deterministic_algorithms(True) and deterministic cuDNN
    output: str = "runs/exp"  # run directory: checkpoints, metrics, TensorBoard events, config.yaml
    resume: str | None = None  # checkpoint to continue from (a last.pt path, or auto = <output>/last.pt)
    eval_every: int = 1  # validate every N epochs (the last epoch is always validated)
    progress: bool = True  # tqdm progress bars (also off when stderr is not a terminal)
    tensorboard: bool = True  # write TensorBoard events to <output>/tensorboard
    log_every: int = 0  # also log train loss every N optimiser steps (0: once per epoch)
    exist_ok: bool = False  # train into an output folder that already holds a run (its checkpoints and metrics are replaced); without it such a run is refused unless resumed
    policy: str = "auto"  # which defaults fill the null keys: auto (finetune when pretrained weights were loaded, else scratch), finetune or scratch
    ema: bool = False  # keep an exponential moving average of the weights; validated and saved as the checkpoint's weights
    ema_decay: float = 0.9998  # EMA decay per optimiser step (the average spans about 1 / (1 - decay) steps)
    ema_warmup: bool = True  # EMA decay ramps up as 1 - (1 + step) ** -2/3 (capped at ema_decay), so early weights fade fast
    patience: int | None = None  # early stopping: stop after this many epochs without improvement of the best metric (null: off)
    min_delta: float = 0.0  # early stopping: smallest change of the best metric that counts as an improvement
    class_weights: str = "none"  # classification loss weights: none, or auto (N / (C * n_c): inverse class frequency of the train set, averaging 1 over its images)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first key whose value cannot work."""
        for name in ("epochs", "accumulate", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"train.{name}: expected an integer >= 1, got {value!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"train.grad_clip: expected a positive max norm or null, got {self.grad_clip}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"train.label_smoothing: expected a value in [0, 1), got {self.label_smoothing}")
        if self.log_every < 0:
            raise ValueError(f"train.log_every: expected >= 0, got {self.log_every}")
        if self.policy not in ("auto", "finetune", "scratch"):
            raise ValueError(f"train.policy: expected auto, finetune or scratch, got {self.policy!r}")
        if self.patience is not None and (isinstance(self.patience, bool) or not isinstance(self.patience, int)
                                          or self.patience < 1):
            raise ValueError(f"train.patience: expected an integer >= 1 or null, got {self.patience!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay: expected a value in [0, 1), got {self.ema_decay}")
        if self.class_weights not in ("none", "auto"):
            raise ValueError(f"train.class_weights: expected none or auto, got {self.class_weights!r}")


@dataclass
class DetectConfig:
    score_thresh: float = 0.01  # evaluation: per-class score below which detections are dropped (keep low for mAP)
    nms_thresh: float = 0.45  # IoU above which class-aware NMS suppresses the lower-scoring box
    max_det: int = 100  # detections kept per image (COCO evaluates at most 100)
    topk_candidates: int = 400  # candidates kept per image and class before NMS (SSDs, RetinaNet)
    resize_mode: str = "letterbox"  # eval and inference geometry: letterbox (keep aspect, pad) or resize (stretch)
    cls_loss: str = "ce"  # SSD classification loss: ce (softmax, 3:1 hard-negative mining) or focal (sigmoid)
    box_loss: str = "smooth_l1"  # SSD box loss on positives: smooth_l1 (on encoded offsets) or giou
    neg_pos_ratio: float = 3.0  # SSD hard negatives per positive (cls_loss ce)
    box_weight: float = 1.0  # SSD factor of the box loss in the total loss
    first_level: str = "auto"  # ResNet-SSD's finest level: layer3 (stride 16), layer2 (stride 8, small objects) or auto (the better anchor coverage of the train boxes)
    anchor_fit: bool = True  # fit the default boxes' scales and ratios to the train set's boxes when anchor_scales/anchor_ratios are null (ResNet-SSDs)
    anchor_scales: list[float] | None = None  # ResNet-SSD default-box scales, one per level plus one, as fractions of the input side (null: fitted, or SSD's 0.1 .. 0.9)
    anchor_ratios: list[list[float]] | None = None  # ResNet-SSD aspect ratios (width / height, each also transposed) per level (null: fitted, or SSD's [2] / [2, 3])
    grid_images: int = 8  # val images in val_predictions.png (predictions beside ground truth; 0: no grid)
    grid_score: float = 0.3  # score from which a prediction is drawn in the grid
    augment: DetectionAugment = field(default_factory=DetectionAugment)  # train-time box-aware augmentation

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"detect.resize_mode: expected letterbox or resize, got {self.resize_mode!r}")
        for name in ("score_thresh", "grid_score"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"detect.{name}: expected a value in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.nms_thresh <= 1.0:
            raise ValueError(f"detect.nms_thresh: expected a value in (0, 1], got {self.nms_thresh}")
        for name in ("max_det", "topk_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"detect.{name}: expected an integer >= 1, got {getattr(self, name)}")
        if self.first_level not in (*FIRST_LEVELS, "auto"):
            raise ValueError(f"detect.first_level: expected auto or one of {FIRST_LEVELS}, got {self.first_level!r}")
        if self.anchor_scales is not None and (len(self.anchor_scales) < 2 or any(s <= 0 for s in self.anchor_scales)):
            raise ValueError(f"detect.anchor_scales: expected positive fractions, one per level plus one, "
                             f"got {self.anchor_scales}")
        if self.anchor_ratios is not None and any(r <= 0 for level in self.anchor_ratios for r in level):
            raise ValueError(f"detect.anchor_ratios: expected positive ratios per level, got {self.anchor_ratios}")
        if self.grid_images < 0:
            raise ValueError(f"detect.grid_images: expected >= 0, got {self.grid_images}")


@dataclass
class ExperimentConfig:
    task: str = "classify"  # classify (ImageFolder classes, a classifier) or detect (COCO-layout boxes, a detector)
    data: DataConfig = field(default_factory=DataConfig)  # dataset, loaders and augmentation
    model: ModelConfig = field(default_factory=ModelConfig)  # architecture and initial weights
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimiser and per-group learning rates
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # learning-rate schedule, stepped per optimiser step
    freeze: FreezeConfig = field(default_factory=FreezeConfig)  # backbone freezing and unfreezing
    train: TrainConfig = field(default_factory=TrainConfig)  # loop, device, precision, seeds and outputs
    detect: DetectConfig = field(default_factory=DetectConfig)  # detection only (task detect): thresholds, eval geometry, loss, box augmentation

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task: expected one of {', '.join(TASKS)}, got {self.task!r}")
