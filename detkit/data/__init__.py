"""Data: image reading and scanning, dataset layouts, classification and detection datasets, formats, augmentation.

Names load from their submodules on first use, so generating data never waits for torch or albumentations.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for IDEs and type checkers; at run time __getattr__ below imports on demand
    from detkit.data.classification import (
        ImageFolderDataset,
        ImageListDataset,
        find_classes,
        image_to_tensor,
        read_image_list,
    )
    from detkit.data.det_synthetic import (
        DET_CLASSES,
        draw_detection_image,
        make_shapes_detection,
    )
    from detkit.data.det_transforms import (
        DetectionAugment,
        EvalDetectionTransform,
        LetterboxParams,
        build_detection_transforms,
        letterbox_params,
        resize_params,
        unletterbox_boxes,
    )
    from detkit.data.detection import (
        DetectionDataset,
        ValidationSummary,
        detection_collate,
        validate_coco,
    )
    from detkit.data.files import resolve_inside, walk_files
    from detkit.data.formats import (
        FORMATS,
        convert_dataset,
        read_dataset,
        write_dataset,
    )
    from detkit.data.images import (
        IMAGE_EXTENSIONS,
        DatasetError,
        is_image_file,
        read_image,
        scan_image_sizes,
        scan_images,
        write_image,
    )
    from detkit.data.layouts import (
        ClassificationSource,
        DetectionSource,
        find_classification_split,
        find_detection_split,
    )
    from detkit.data.stats import compute_mean_std
    from detkit.data.synthetic import (
        SHAPES,
        make_shape_image,
        make_shapes_classification,
    )
    from detkit.data.transforms import (
        ClassificationAugment,
        build_classification_transforms,
    )

_EXPORTS = {
    "ImageFolderDataset": "classification",
    "ImageListDataset": "classification",
    "find_classes": "classification",
    "image_to_tensor": "classification",
    "read_image_list": "classification",
    "resolve_inside": "files",
    "walk_files": "files",
    "ClassificationSource": "layouts",
    "DetectionSource": "layouts",
    "find_classification_split": "layouts",
    "find_detection_split": "layouts",
    "IMAGE_EXTENSIONS": "images",
    "DatasetError": "images",
    "is_image_file": "images",
    "read_image": "images",
    "scan_image_sizes": "images",
    "scan_images": "images",
    "write_image": "images",
    "compute_mean_std": "stats",
    "SHAPES": "synthetic",
    "make_shape_image": "synthetic",
    "make_shapes_classification": "synthetic",
    "DET_CLASSES": "det_synthetic",
    "draw_detection_image": "det_synthetic",
    "make_shapes_detection": "det_synthetic",
    "DetectionAugment": "det_transforms",
    "EvalDetectionTransform": "det_transforms",
    "LetterboxParams": "det_transforms",
    "build_detection_transforms": "det_transforms",
    "letterbox_params": "det_transforms",
    "resize_params": "det_transforms",
    "unletterbox_boxes": "det_transforms",
    "DetectionDataset": "detection",
    "ValidationSummary": "detection",
    "detection_collate": "detection",
    "validate_coco": "detection",
    "FORMATS": "formats",
    "convert_dataset": "formats",
    "read_dataset": "formats",
    "write_dataset": "formats",
    "ClassificationAugment": "transforms",
    "build_classification_transforms": "transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'detkit.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"detkit.data.{module}"), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
