"""Calibration data: a few preprocessed image batches for the scoring pass, from whatever dataset the user has.

`calibration_batches(dataset, image_processor)` accepts a `datasets` object, a local image folder, a directory
written by `save_to_disk` or a Hub dataset name, samples `num_samples` images reproducibly and returns float32
`pixel_values` batches of shape (B, 3, H, W). It decodes one batch at a time, so memory stays at the sampled
examples whatever the size of the dataset.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict


IMAGE_COLUMNS = ("image", "img")  # tried in this order when the user names none
PIXEL_VALUES_COLUMN = "pixel_values"
SHUFFLE_BUFFER_SIZE = 1000  # examples buffered to shuffle an IterableDataset
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


# ---- image processor ---------------------------------------------------------------------------------------
def derive_image_processor(config):
    """A ViT image processor for a model that ships none: resize to `config.image_size` (bilinear), rescale by
    1/255, normalize with the ImageNet mean/std."""
    import transformers
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
    from transformers.utils import is_torchvision_available

    image_size = getattr(config, "image_size", None)
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        height = width = image_size
    elif isinstance(image_size, (list, tuple)) and len(image_size) == 2:
        height, width = (int(s) for s in image_size)
    else:
        raise ValueError(
            f"Cannot derive an image processor: config.image_size is {image_size!r}, expected an int or a "
            "(height, width) pair. Pass an image processor explicitly."
        )
    # Without torchvision, transformers swaps in the PIL backend anyway, with a warning; pick it directly.
    cls = getattr(transformers, "ViTImageProcessorPil", None)
    if cls is None or is_torchvision_available():
        cls = transformers.ViTImageProcessor
    return cls(
        do_resize=True,
        size={"height": height, "width": width},
        resample=PILImageResampling.BILINEAR,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
    )


def resolve_image_processor(model_name_or_path: str | None, config):
    """The model's own image processor (`AutoImageProcessor.from_pretrained`) when it has one, else
    `derive_image_processor(config)`. Never raises for a missing processor."""
    if model_name_or_path is not None:
        from transformers import AutoImageProcessor

        try:
            return AutoImageProcessor.from_pretrained(model_name_or_path)
        except (OSError, ValueError):
            pass  # no preprocessor_config.json (or offline): fall back to one derived from the config
    return derive_image_processor(config)


# ---- dataset -----------------------------------------------------------------------------------------------
def _pick_split(dataset_dict, split: str, what: str):
    if split not in dataset_dict:
        raise ValueError(
            f"The calibration dataset {what} has no split {split!r}; available splits: {sorted(dataset_dict)}. "
            "Choose one with split=... (or --split)."
        )
    return dataset_dict[split]


def _is_saved_dataset(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, name)) for name in ("state.json", "dataset_dict.json"))


def _holds_images(path: str) -> bool:
    """True as soon as one image file is found under `path` (stops at the first)."""
    for _, _, files in os.walk(path):
        if any(name.lower().endswith(_IMAGE_EXTENSIONS) for name in files):
            return True
    return False


def load_calibration_dataset(
    dataset, split: str = "train", data_dir: str | None = None, streaming: bool = False
) -> Dataset | IterableDataset:
    """The calibration split as a `Dataset` or `IterableDataset`.

    `dataset` is a `datasets.Dataset` / `IterableDataset`, a `DatasetDict` / `IterableDatasetDict` (its `split` is
    taken), or a string: a local directory of images (`imagefolder`, class subfolders become labels), a directory
    written by `save_to_disk`, or a dataset name for `datasets.load_dataset(name, split=split, data_dir=data_dir)`.
    `streaming=True` streams a named dataset instead of downloading all of it.
    """
    if isinstance(dataset, (Dataset, IterableDataset)):
        return dataset
    if isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        return _pick_split(dataset, split, f"({type(dataset).__name__})")
    if not isinstance(dataset, (str, os.PathLike)):
        raise TypeError(
            f"Cannot use a {type(dataset).__name__} as calibration dataset; pass a datasets.Dataset, "
            "IterableDataset or DatasetDict, a local image folder, a save_to_disk directory or a dataset name."
        )

    import datasets

    name = os.fspath(dataset)
    folder = os.path.join(name, data_dir) if data_dir else name
    try:
        if os.path.isdir(name) and _is_saved_dataset(name):
            loaded = datasets.load_from_disk(name)
        elif os.path.isdir(folder) and _holds_images(folder):
            loaded = datasets.load_dataset("imagefolder", data_dir=folder, split=split)  # local: nothing to download
        else:
            loaded = datasets.load_dataset(name, data_dir=data_dir, split=split, streaming=streaming)
    except Exception as err:  # any loader failure: name the input, keep the cause chained
        where = "a local directory" if os.path.isdir(name) else "not a local directory"
        raise ValueError(
            f"Could not load the calibration dataset {name!r} (split {split!r}; {where}): "
            f"{type(err).__name__}: {err}. Pass a directory of images, a directory written by "
            "Dataset.save_to_disk, a dataset name that datasets.load_dataset can load, or a datasets.Dataset."
        ) from err
    if isinstance(loaded, (DatasetDict, IterableDatasetDict)):  # a save_to_disk DatasetDict
        return _pick_split(loaded, split, repr(name))
    return loaded


def column_names(dataset) -> list[str]:
    names = dataset.column_names
    if names is None:  # IterableDataset with unknown features: look at the first example
        first = next(iter(dataset), None)
        if first is None:
            raise ValueError("Calibration dataset is empty; give a dataset with at least one image.")
        names = list(first)
    return list(names)


def find_image_column(dataset, image_column: str | None = None) -> str:
    """The column holding the images: `image_column` if given, else `pixel_values`, else the first of
    `IMAGE_COLUMNS`, else the first column typed `datasets.Image`."""
    names = column_names(dataset)
    if image_column is not None:
        if image_column not in names:
            raise ValueError(
                f"image_column={image_column!r} is not a column of the calibration dataset; found columns {names}. "
                "Name one of them with image_column=... (or --image-column)."
            )
        return image_column
    for candidate in (PIXEL_VALUES_COLUMN, *IMAGE_COLUMNS):
        if candidate in names:
            return candidate
    from datasets import Image

    features = getattr(dataset, "features", None) or {}
    for name, feature in features.items():
        if isinstance(feature, Image):
            return name
    raise ValueError(
        f"Calibration dataset has no image column: found columns {names}; name it with image_column=... "
        "(or --image-column)."
    )


# ---- preprocessing -----------------------------------------------------------------------------------------
def _as_image(value, column: str):
    """A PIL image (RGB) or an HWC/CHW array with 3 channels, from what a dataset row holds."""
    from PIL import Image

    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):  # an undecoded datasets.Image
        value = Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
    if isinstance(value, Image.Image):
        return value if value.mode == "RGB" else value.convert("RGB")
    array = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.dtype == object or array.ndim not in (2, 3):
        raise ValueError(
            f"Column {column!r} holds a value of shape {array.shape} (dtype {array.dtype}); expected PIL images "
            "or image arrays of shape (H, W), (H, W, C) or (C, H, W). Name the image column with image_column=..."
        )
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ValueError(_non_finite_error(column))
    if (
        np.issubdtype(array.dtype, np.integer)
        and (array.ndim == 2 or array.shape[-1] in (1, 3, 4))
        and array.size
        and 0 <= array.min()
        and array.max() <= 255
    ):
        # 8-bit images (datasets returns them as int64 arrays) as PIL images: the image processor then treats them
        # exactly as decoded image files, whichever backend it runs on (PIL, or torchvision when it is installed)
        array = array.astype(np.uint8)
        return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array).convert("RGB")
    if array.ndim == 2:  # grayscale: repeat to 3 channels, HWC
        return np.stack([array] * 3, axis=-1)
    if array.shape[-1] == 1:
        return np.repeat(array, 3, axis=-1)
    if array.shape[0] == 1 and array.shape[-1] not in (3, 4):
        return np.repeat(array, 3, axis=0)
    if array.shape[-1] == 4:  # RGBA: drop alpha
        return array[..., :3]
    return array


def _as_pixel_values(value) -> torch.Tensor:
    tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value, dtype=np.float32))
    if tensor.dim() != 3:
        raise ValueError(
            f"Each 'pixel_values' entry must be one preprocessed image of shape (3, H, W), got shape "
            f"{tuple(tensor.shape)}. Give raw images in an 'image' column instead, with image_column=..."
        )
    return tensor.to(torch.float32)


def _non_finite_error(column: str) -> str:
    return (
        f"Calibration batch contains NaN/inf pixel values (column {column!r}); clean the dataset or check the "
        "image processor (mean/std, rescale factor)."
    )


def preprocess_images(values: list, column: str, image_processor) -> torch.Tensor:
    if column == PIXEL_VALUES_COLUMN:
        tensors = [_as_pixel_values(v) for v in values]
        shapes = sorted({tuple(t.shape) for t in tensors})
        if len(shapes) > 1:
            raise ValueError(
                f"The 'pixel_values' of one calibration batch have different shapes {shapes}; preprocess all "
                "images to the model's image size."
            )
        batch = torch.stack(tensors)
    else:
        if image_processor is None:
            raise ValueError(
                f"Column {column!r} holds raw images, which need an image processor; pass image_processor=... "
                "(e.g. resolve_image_processor(model_name_or_path, model.config))."
            )
        images = [_as_image(v, column) for v in values]
        batch = torch.as_tensor(image_processor(images=images, return_tensors="pt").pixel_values)
        batch = batch.to(torch.float32)
    if not torch.isfinite(batch).all():
        raise ValueError(_non_finite_error(column))
    return batch


def chunks(values: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for value in values:
        chunk.append(value)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _check_count(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


class CalibrationSizeWarning(UserWarning):
    """The calibration dataset holds fewer examples than were asked for (all of them are used)."""


def _warn_short(available: int, num_samples: int) -> None:
    warnings.warn(
        f"The calibration dataset has only {available} examples, fewer than num_samples={num_samples}; "
        f"calibrating on all {available}.",
        CalibrationSizeWarning,
        stacklevel=3,
    )


def calibration_batches(
    dataset,
    image_processor,
    num_samples: int = 64,
    batch_size: int = 16,
    seed: int = 0,
    image_column: str | None = None,
    split: str = "train",
    show_progress: bool = True,
) -> list[torch.Tensor]:
    """`min(num_samples, len(dataset))` examples sampled with `seed`, preprocessed into float32 `pixel_values`
    batches of at most `batch_size` images, shape (B, 3, H, W).

    `dataset`: anything `load_calibration_dataset` accepts. A `pixel_values` column is used as is; images (PIL,
    arrays, grayscale included) go through `image_processor`. The sample is the first `num_samples` rows of
    `Dataset.shuffle(seed=seed)`, or of `IterableDataset.shuffle(seed=seed, buffer_size=1000)`.
    """
    from tqdm.auto import tqdm

    _check_count(num_samples, "num_samples")
    _check_count(batch_size, "batch_size")
    data = load_calibration_dataset(dataset, split=split, streaming=True)  # a named dataset: only what is used
    column = find_image_column(data, image_column)

    if isinstance(data, Dataset):
        if len(data) == 0:
            raise ValueError("Calibration dataset is empty; give a dataset with at least one image.")
        total = min(num_samples, len(data))
        if len(data) < num_samples:
            _warn_short(len(data), num_samples)
        # Same order as data.shuffle(seed=seed), without writing an indices cache next to the user's data.
        order = np.random.default_rng(seed).permutation(len(data))[:total].tolist()
        data = data.select_columns([column])
        if column == PIXEL_VALUES_COLUMN:  # arrays, not nested Python lists
            data = data.with_format("numpy")
        values = (data[order[i : i + batch_size]][column] for i in range(0, total, batch_size))
    else:
        total = num_samples
        data = data.select_columns([column])
        if column == PIXEL_VALUES_COLUMN:
            data = data.with_format("numpy")
        data = data.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER_SIZE).take(num_samples)
        values = chunks((example[column] for example in data), batch_size)

    batches = []
    with tqdm(total=total, desc="Calibration data", unit="img", disable=not show_progress) as progress:
        for chunk in values:
            batches.append(preprocess_images(list(chunk), column, image_processor))
            progress.update(len(chunk))
    count = sum(len(b) for b in batches)
    if count == 0:
        raise ValueError("Calibration dataset is empty; give a dataset with at least one image.")
    if count < total:  # an IterableDataset shorter than num_samples
        _warn_short(count, num_samples)
    return batches


# ---- text ----------------------------------------------------------------------------------------------------
TEXT_COLUMNS = ("text", "sentence", "content", "document", "question", "premise", "sentence1")


def find_text_column(dataset, text_column: str | None = None) -> str:
    """The column holding the text: `text_column` if given, else the first of `TEXT_COLUMNS`, else the first column
    of strings."""
    names = column_names(dataset)
    if text_column is not None:
        if text_column not in names:
            raise ValueError(
                f"text_column={text_column!r} is not a column of the calibration dataset; found columns {names}. "
                "Name one of them with text_column=... (or --text-column)."
            )
        return text_column
    for candidate in TEXT_COLUMNS:
        if candidate in names:
            return candidate
    features = getattr(dataset, "features", None) or {}
    for name, feature in features.items():
        if getattr(feature, "dtype", None) in ("string", "large_string"):
            return name
    raise ValueError(
        f"Calibration dataset has no text column: found columns {names}; name it with text_column=... "
        "(or --text-column)."
    )


def tokenize_batch(tokenizer, texts: list, pairs: list | None = None, max_length: int = 128) -> dict:
    """One calibration batch of model inputs: `texts` (and `pairs`) tokenised, padded to the longest (dynamic
    padding) with an attention mask, truncated to `max_length` tokens."""
    bad = [t for t in [*texts, *(pairs or [])] if not isinstance(t, str)]
    if bad:
        raise ValueError(
            f"Text calibration needs strings; the text column holds {type(bad[0]).__name__} values. Name the text "
            "column with text_column=..."
        )
    encoded = tokenizer(texts, pairs, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    return dict(encoded)


def text_calibration_batches(
    dataset,
    tokenizer,
    num_samples: int = 64,
    batch_size: int = 16,
    seed: int = 0,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    max_length: int = 128,
    split: str = "train",
    show_progress: bool = True,
) -> list[dict]:
    """`min(num_samples, len(dataset))` texts (or text pairs) sampled with `seed` as `calibration_batches` samples
    images, tokenised with `tokenizer` into batches of model inputs (`input_ids`, `attention_mask`, ...), each padded
    to its longest sequence. A dataset given by name is streamed: only the sampled rows are downloaded."""
    from tqdm.auto import tqdm

    _check_count(num_samples, "num_samples")
    _check_count(batch_size, "batch_size")
    _check_count(max_length, "max_length")
    if tokenizer is None:
        raise ValueError("Text calibration needs the model's tokenizer; pass tokenizer=... to SNPPruner.")
    data = load_calibration_dataset(dataset, split=split, streaming=True)
    column = find_text_column(data, text_column)
    columns = [column]
    if text_pair_column is not None:
        if text_pair_column not in column_names(data):
            raise ValueError(
                f"text_pair_column={text_pair_column!r} is not a column of the calibration dataset; found columns "
                f"{column_names(data)}."
            )
        columns.append(text_pair_column)
    if isinstance(data, Dataset):
        if len(data) == 0:
            raise ValueError("Calibration dataset is empty; give a dataset with at least one text.")
        total = min(num_samples, len(data))
        if len(data) < num_samples:
            _warn_short(len(data), num_samples)
        order = np.random.default_rng(seed).permutation(len(data))[:total].tolist()
        data = data.select_columns(columns)
        rows = (data[order[i : i + batch_size]] for i in range(0, total, batch_size))
    else:
        total = num_samples
        data = data.select_columns(columns).shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER_SIZE).take(num_samples)
        rows = ({c: [e[c] for e in chunk] for c in columns} for chunk in chunks(iter(data), batch_size))
    batches = []
    with tqdm(total=total, desc="Calibration data", unit="text", disable=not show_progress) as progress:
        for row in rows:
            pairs = list(row[text_pair_column]) if text_pair_column is not None else None
            batches.append(tokenize_batch(tokenizer, list(row[column]), pairs, max_length))
            progress.update(len(row[column]))
    count = sum(len(b["input_ids"]) for b in batches)
    if count == 0:
        raise ValueError("Calibration dataset is empty; give a dataset with at least one text.")
    if count < total:
        _warn_short(count, num_samples)
    return batches


def batch_length(batch) -> int:
    """Number of inputs in a calibration batch (a tensor, or a dict of model inputs)."""
    if isinstance(batch, dict):
        return len(next(v for v in batch.values() if torch.is_tensor(v)))
    return len(batch)


def split_batches(batches: list, count: int) -> tuple[list, list]:
    """The first `count` inputs of `batches` (kept in their batches, the last one cut) and the rest, in batches."""
    head, tail, seen = [], [], 0
    for batch in batches:
        n = batch_length(batch)
        if seen + n <= count:
            head.append(batch)
        elif seen >= count:
            tail.append(batch)
        else:
            cut = count - seen
            if isinstance(batch, dict):
                head.append({k: v[:cut] if torch.is_tensor(v) else v for k, v in batch.items()})
                tail.append({k: v[cut:] if torch.is_tensor(v) else v for k, v in batch.items()})
            else:
                head.append(batch[:cut])
                tail.append(batch[cut:])
        seen += n
    return head, tail


__all__ = [
    "CalibrationSizeWarning",
    "IMAGE_COLUMNS",
    "TEXT_COLUMNS",
    "batch_length",
    "find_text_column",
    "split_batches",
    "text_calibration_batches",
    "tokenize_batch",
    "calibration_batches",
    "chunks",
    "column_names",
    "derive_image_processor",
    "find_image_column",
    "load_calibration_dataset",
    "preprocess_images",
    "resolve_image_processor",
]
