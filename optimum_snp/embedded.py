"""The embedded default model: a small ViT trained on scikit-learn's digits, so the pipeline runs without network.

`digits_dataset()` turns the 1797 8x8 digits into a `datasets.DatasetDict` of RGB images; `load_embedded_model()`
returns the folder of a ViT trained on it (training it in about a minute on first use and caching it).
Accuracy is measured with `optimum_snp.evaluation.evaluate_accuracy`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time

import datasets
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
import transformers
from tqdm.auto import tqdm
from transformers import ViTConfig, ViTForImageClassification

from .evaluation import evaluate_accuracy
from .utils import atomic_directory
from .version import __version__


DIGITS_IMAGE_SIZE = 32
DIGITS_LABELS = [str(i) for i in range(10)]
DEFAULT_EPOCHS = 16
TRAINING_FILE = "training.json"
_CACHE_ENV = "OPTIMUM_SNP_CACHE"
_MODEL_FOLDER = "digits-vit"
_MODEL_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", TRAINING_FILE)


def digits_dataset(seed: int = 0) -> datasets.DatasetDict:
    """scikit-learn's 1797 8x8 digits as a `DatasetDict` with a fixed stratified 'train' (70%) / 'test' (30%) split.

    Columns: 'image' (RGB 8x8 PIL images, uint8 = round(value * 255 / 16)) and 'label' (`ClassLabel` '0'..'9').
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise ImportError("The digits dataset comes from scikit-learn: `pip install scikit-learn`.") from err

    digits = load_digits()
    pixels = np.round(digits.images * 255.0 / 16.0).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.3, stratify=labels, random_state=seed)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=DIGITS_LABELS)})

    def split(indices):
        images = [PIL.Image.fromarray(np.repeat(pixels[i][..., None], 3, axis=-1)) for i in indices]
        return datasets.Dataset.from_dict({"image": images, "label": labels[indices].tolist()}, features=features)

    return datasets.DatasetDict({"train": split(train_idx), "test": split(test_idx)})


def digits_config() -> ViTConfig:
    """The embedded model's architecture: 4 layers, hidden 96, 4 heads of 24, MLP 384, 4x4 patches of 32x32."""
    return ViTConfig(
        image_size=DIGITS_IMAGE_SIZE,
        patch_size=4,
        num_channels=3,
        hidden_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=384,
        num_labels=len(DIGITS_LABELS),
        id2label=dict(enumerate(DIGITS_LABELS)),
        label2id={name: i for i, name in enumerate(DIGITS_LABELS)},
        hidden_dropout_prob=0.0,
    )


def digits_image_processor(image_size: int = DIGITS_IMAGE_SIZE):
    """The embedded model's `ViTImageProcessor`: bilinear resize to 32x32 (or `image_size`), then scale to [-1, 1]."""
    try:
        import torchvision  # noqa: F401
        from transformers import ViTImageProcessor as processor_cls
    except ImportError:  # the torchvision-backed class would only warn and fall back to this one
        from transformers import ViTImageProcessorPil as processor_cls
    return processor_cls(
        size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        resample=PIL.Image.BILINEAR,
    )


def embedded_model_dir(cache_dir: str | None = None) -> str:
    """Where the trained model lives: `cache_dir`, else `$OPTIMUM_SNP_CACHE/digits-vit`, else
    `~/.cache/optimum_snp/digits-vit`."""
    if cache_dir is not None:
        return os.path.abspath(os.path.expanduser(os.fspath(cache_dir)))
    root = os.environ.get(_CACHE_ENV) or os.path.join("~", ".cache", "optimum_snp")
    return os.path.abspath(os.path.join(os.path.expanduser(root), _MODEL_FOLDER))


def _is_complete(model_dir: str) -> bool:
    return all(os.path.isfile(os.path.join(model_dir, name)) for name in _MODEL_FILES)


def load_embedded_model(cache_dir: str | None = None, retrain: bool = False, show_progress: bool = True) -> str:
    """Path of the trained digits ViT (model, image processor and `training.json`); trains and caches it on first
    use or when `retrain=True`.

    The model is trained into a temporary sibling folder and renamed into place, so an interrupted run never leaves
    a half-written model, and concurrent callers never corrupt it (the first to finish wins).
    """
    final_dir = embedded_model_dir(cache_dir)
    if not retrain and _is_complete(final_dir):
        return final_dir
    if not retrain and os.path.exists(final_dir) and os.listdir(final_dir):
        raise FileExistsError(
            f"{final_dir} exists but does not hold a complete embedded model (missing one of {list(_MODEL_FILES)}); "
            "delete it, pass another `cache_dir`, or pass `retrain=True` to replace it."
        )
    prefix = f".{os.path.basename(final_dir)}.tmp-"
    with atomic_directory(final_dir, prefix=prefix, shared=True, is_complete=_is_complete) as tmp_dir:
        train_digits_vit(tmp_dir, show_progress=show_progress)
    return final_dir


def _shift(pixel_values: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by its own random (dy, dx) in [-max_shift, max_shift], filling with the background."""
    batch, _, height, width = pixel_values.shape
    background = pixel_values.amin()
    padded = F.pad(pixel_values, (max_shift,) * 4, value=float(background))
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, batch), generator=generator)
    rows = (dy[:, None] + torch.arange(height))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(width))[:, None, None, :]
    return padded[
        torch.arange(batch)[:, None, None, None], torch.arange(padded.shape[1])[None, :, None, None], rows, cols
    ]


def train_digits_vit(
    output_dir: str,
    seed: int = 0,
    epochs: int = DEFAULT_EPOCHS,
    show_progress: bool = True,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.05,
    warmup_fraction: float = 0.1,
    label_smoothing: float = 0.1,
    max_shift: int = 0,
) -> dict:
    """Train the digits ViT from scratch on `digits_dataset()['train']` and save it (model, image processor,
    `training.json`) to `output_dir`; returns the metrics written to `training.json` ('top1': test accuracy).

    A plain loop: AdamW, linear warmup then cosine decay, label smoothing, gradient clipping. `seed` drives the
    initialization and the batch order; the split stays the fixed `digits_dataset()` one, so the test images are
    never trained on. `max_shift` > 0 adds random translations of up to that many 32x32 pixels (4 = one digit
    pixel); it is off by default because it slows convergence more than it helps within the ~1 minute budget.
    """
    if epochs < 1:
        raise ValueError(f"`epochs` must be >= 1, got {epochs}.")
    start = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    data = digits_dataset()
    processor = digits_image_processor()
    pixel_values = processor(list(data["train"]["image"]), return_tensors="pt")["pixel_values"]
    labels = torch.tensor(data["train"]["label"])

    model = ViTForImageClassification(digits_config())
    model.train()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (decay if param.ndim >= 2 and "embeddings" not in name else no_decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate,
        betas=(0.9, 0.98),  # a shorter second-moment memory suits a few hundred steps
    )
    total_steps = epochs * math.ceil(len(labels) / batch_size)
    warmup_steps = max(1, int(warmup_fraction * total_steps))

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    progress = tqdm(range(epochs), desc="Training the digits ViT", unit="epoch", disable=not show_progress)
    for _ in progress:
        order = torch.randperm(len(labels), generator=generator)
        total_loss = 0.0
        for begin in range(0, len(labels), batch_size):
            idx = order[begin : begin + batch_size]
            inputs = pixel_values[idx] if max_shift == 0 else _shift(pixel_values[idx], max_shift, generator)
            loss = F.cross_entropy(model(pixel_values=inputs).logits, labels[idx], label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(idx)
        progress.set_postfix(loss=f"{total_loss / len(labels):.3f}")

    top1 = evaluate_accuracy(model, data["test"], processor, show_progress=False)["top1"]
    metrics = {
        "top1": round(top1, 6),
        "epochs": epochs,
        "seconds": round(time.perf_counter() - start, 2),
        "seed": seed,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "max_shift": max_shift,
        "num_train": len(data["train"]),
        "num_test": len(data["test"]),
        "dataset": "sklearn.datasets.load_digits, stratified 70/30 split",
        "versions": {
            "optimum_snp": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "datasets": datasets.__version__,
            "python": platform.python_version(),
        },
    }
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    with open(os.path.join(output_dir, TRAINING_FILE), "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics


__all__ = [
    "DIGITS_IMAGE_SIZE",
    "digits_dataset",
    "digits_config",
    "digits_image_processor",
    "embedded_model_dir",
    "load_embedded_model",
    "train_digits_vit",
]
