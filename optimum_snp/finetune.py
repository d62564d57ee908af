"""Recover accuracy after pruning: distillation fine-tuning of the pruned student on a `datasets` split."""

from __future__ import annotations

import tempfile
import time

import torch
from torch import nn

from .calibration import find_image_column, load_calibration_dataset, preprocess_images
from .training import SNPDistillationTrainer, SNPTrainingArguments


def training_view(dataset, image_processor, image_column: str | None = None, label_column: str = "label"):
    """`dataset` with images turned into `pixel_values` on the fly (`with_transform`) and a `labels` column."""
    column = find_image_column(dataset, image_column)
    if label_column not in dataset.column_names:
        raise ValueError(
            f"The fine-tuning dataset has no label column {label_column!r}: found columns {dataset.column_names}; "
            "pass label_column=... (CLI: --label-column)."
        )

    def transform(batch):
        pixels = preprocess_images(list(batch[column]), column, image_processor)
        return {"pixel_values": pixels, "labels": torch.as_tensor(batch[label_column])}

    return dataset.with_transform(transform)


def collate(examples):
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.stack([torch.as_tensor(e["labels"]) for e in examples]),
    }


def training_arguments(
    output_dir: str,
    epochs: float,
    learning_rate: float,
    batch_size: int,
    distillation_type: str,
    seed: int,
    show_progress: bool,
) -> SNPTrainingArguments:
    """The recipe shared by `finetune` and `gradual.gradual_prune`: cosine schedule with 10% warm-up, weight decay
    0.05, no checkpoints or logging, on the GPU when there is one."""
    return SNPTrainingArguments(
        output_dir=output_dir,
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,
        weight_decay=0.05,
        distillation_type=distillation_type,
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        seed=seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=not show_progress,
        use_cpu=not torch.cuda.is_available(),
    )


def finetune(
    student: nn.Module,
    teacher: nn.Module | None,
    dataset,
    image_processor,
    epochs: float = 5,
    learning_rate: float = 1e-3,
    batch_size: int = 32,
    distillation_type: str = "soft",
    split: str = "train",
    image_column: str | None = None,
    label_column: str = "label",
    seed: int = 0,
    output_dir: str | None = None,
    show_progress: bool = True,
) -> dict:
    """Fine-tunes `student` in place with `SNPDistillationTrainer` (teacher = the unpruned model); returns
    {"epochs", "seconds", "train_loss", "distillation_type"}. Checkpoints are not kept unless `output_dir`."""
    data = training_view(load_calibration_dataset(dataset, split=split), image_processor, image_column, label_column)
    with tempfile.TemporaryDirectory() as scratch:
        args = training_arguments(
            output_dir or scratch,
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=batch_size,
            distillation_type=distillation_type if teacher is not None else "none",
            seed=seed,
            show_progress=show_progress,
        )
        trainer = SNPDistillationTrainer(
            model=student, args=args, teacher=teacher, train_dataset=data, data_collator=collate
        )
        start = time.perf_counter()
        result = trainer.train()
    student.eval()
    return {
        "epochs": epochs,
        "seconds": round(time.perf_counter() - start, 1),
        "train_loss": result.training_loss,
        "distillation_type": args.distillation_type,
    }
