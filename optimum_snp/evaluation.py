"""Evaluation: top-1 / top-5 accuracy of an image classifier (original, pruned or fine-tuned) on a labelled split.

`evaluate_accuracy(model, dataset, image_processor)` reads the dataset the way calibration does (a `datasets`
object, a local image folder, a `save_to_disk` directory or a dataset name), runs the model batch by batch and scores
the logits with the `snp_accuracy` metric shipped in `optimum_snp.metrics`, so it needs no network.
"""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset

from .calibration import (
    PIXEL_VALUES_COLUMN,
    chunks,
    column_names,
    find_image_column,
    load_calibration_dataset,
    preprocess_images,
)
from .metrics import load_accuracy_metric


TOP_K = 5


def _check_positive(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _num_labels(model) -> int | None:
    config = getattr(model, "config", None)
    num_labels = getattr(config, "num_labels", None)
    return num_labels if isinstance(num_labels, int) else None


def _as_label_array(labels, label_column: str) -> np.ndarray:
    array = np.asarray(labels)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"Column {label_column!r} holds {array.dtype} values; expected integer class ids (e.g. a ClassLabel "
            "column). Encode the labels with dataset.class_encode_column(...) or pass label_column=..."
        )
    return array.astype(np.int64)


def _check_labels(labels: np.ndarray, label_column: str, num_labels: int | None) -> None:
    if labels.size == 0:
        return
    if labels.min() < 0:
        raise ValueError(
            f"Column {label_column!r} holds the negative label {int(labels.min())} (an unlabelled example?); "
            "evaluate on a split where every example has a class id."
        )
    if num_labels is not None and labels.max() >= num_labels:
        raise ValueError(
            f"The model predicts {num_labels} classes (config.num_labels) but column {label_column!r} holds the "
            f"label {int(labels.max())}; evaluate a model whose classification head covers these labels (e.g. one "
            "fine-tuned on this dataset), or pass the right label_column=..."
        )


def _logits(model, pixel_values: torch.Tensor) -> torch.Tensor:
    outputs = model(pixel_values=pixel_values)
    logits = getattr(outputs, "logits", None)
    if logits is None:
        raise ValueError(
            f"{type(model).__name__} returns no logits; evaluate a model with a classification head "
            "(e.g. AutoModelForImageClassification)."
        )
    return logits


def evaluate_accuracy(
    model: torch.nn.Module,
    dataset,
    image_processor,
    split: str = "test",
    image_column: str | None = None,
    label_column: str = "label",
    batch_size: int = 64,
    max_samples: int | None = None,
    show_progress: bool = True,
) -> dict:
    """Top-1 and top-5 accuracy (0..1) of `model` on the `split` of `dataset`: {"top1", "top5", "num_samples"}.

    `dataset`: anything `load_calibration_dataset` accepts (a `Dataset`, a `DatasetDict` whose `split` is taken, a
    local image folder, a `save_to_disk` directory or a dataset name). Images are taken from `image_column` (found
    like calibration does when None) and preprocessed with `image_processor`; a `pixel_values` column is used as is.
    `max_samples` evaluates the first `max_samples` examples only (in dataset order). "top5" is None when the model
    has fewer than 5 classes. The model runs in eval mode under `torch.inference_mode` and gets its training mode
    back afterwards.
    """
    from tqdm.auto import tqdm

    _check_positive(batch_size, "batch_size")
    if max_samples is not None:
        _check_positive(max_samples, "max_samples")
    data = load_calibration_dataset(dataset, split=split)
    column = find_image_column(data, image_column)
    names = column_names(data)
    if label_column not in names:
        raise ValueError(
            f"The evaluation dataset has no label column {label_column!r}: found columns {names}; pass "
            "label_column=... naming the column of class ids."
        )
    num_labels = _num_labels(model)

    if isinstance(data, Dataset):
        if max_samples is not None and max_samples < len(data):
            data = data.select(range(max_samples))
        if len(data) == 0:
            raise ValueError("The evaluation dataset is empty; pass a split with at least one labelled example.")
        total = len(data)
        # Check every label before spending time on the model.
        _check_labels(_as_label_array(data[label_column], label_column), label_column, num_labels)
        data = data.select_columns([column, label_column])
        if column == PIXEL_VALUES_COLUMN:  # arrays, not nested Python lists
            data = data.with_format("numpy")
        batches = (data[begin : begin + batch_size] for begin in range(0, total, batch_size))
        batches = ((batch[column], batch[label_column]) for batch in batches)
    else:  # IterableDataset: labels are checked batch by batch
        total = max_samples
        data = data.select_columns([column, label_column])
        if column == PIXEL_VALUES_COLUMN:
            data = data.with_format("numpy")
        if max_samples is not None:
            data = data.take(max_samples)
        batches = (
            ([row[column] for row in rows], [row[label_column] for row in rows])
            for rows in chunks(iter(data), batch_size)
        )

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    metric = load_accuracy_metric()
    count = 0
    was_training = model.training
    model.eval()
    try:
        with (
            torch.inference_mode(),
            tqdm(total=total, desc="Evaluating", unit="img", disable=not show_progress) as progress,
        ):
            for images, labels in batches:
                labels = _as_label_array(labels, label_column)
                _check_labels(labels, label_column, num_labels)
                pixel_values = preprocess_images(list(images), column, image_processor).to(device=device, dtype=dtype)
                logits = _logits(model, pixel_values).float().cpu().numpy()
                metric.add_batch(predictions=logits, references=labels)
                count += len(labels)
                progress.update(len(labels))
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("The evaluation dataset is empty; pass a split with at least one labelled example.")
    result = metric.compute(k=TOP_K)
    return {"top1": result["top1"], "top5": result.get(f"top{TOP_K}"), "num_samples": count}


__all__ = ["evaluate_accuracy"]
