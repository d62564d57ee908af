"""Calibration data from every accepted source, on sklearn's 8x8 digits (real images, no download)."""

import warnings

import datasets
import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features
from PIL import Image
from sklearn.datasets import load_digits
from transformers import ViTConfig, ViTImageProcessor

from optimum_snp.calibration import (
    calibration_batches,
    derive_image_processor,
    find_image_column,
    load_calibration_dataset,
    resolve_image_processor,
)


N = 40  # digits used per test: enough for several batches, fast to decode
CONFIG = ViTConfig(
    image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64
)


@pytest.fixture(autouse=True)
def offline_private_cache(tmp_path_factory, monkeypatch):
    """No Hub access, and dataset caches (imagefolder, generators) in a temporary directory, not ~/.cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.getbasetemp() / "hf_datasets_cache")


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return (data.images[:N] * 15.9).astype(np.uint8), data.target[:N]


@pytest.fixture(scope="module")
def pil_images(digits):
    return [Image.fromarray(img).convert("RGB") for img in digits[0]]


@pytest.fixture(scope="module")
def image_ds(digits, pil_images):
    features = Features({"image": datasets.Image(), "label": ClassLabel(num_classes=10)})
    return Dataset.from_dict({"image": pil_images, "label": digits[1].tolist()}, features=features)


@pytest.fixture(scope="module")
def processor():
    return derive_image_processor(CONFIG)


def batches(dataset, processor, **kwargs):
    return calibration_batches(dataset, processor, show_progress=False, **kwargs)


def reference(images, processor) -> torch.Tensor:
    return processor(images=images, return_tensors="pt").pixel_values


def test_derive_image_processor():
    proc = derive_image_processor(CONFIG)
    assert proc.size == {"height": 32, "width": 32}
    assert list(proc.image_mean) == [0.485, 0.456, 0.406] and list(proc.image_std) == [0.229, 0.224, 0.225]
    assert proc.rescale_factor == pytest.approx(1 / 255)
    assert derive_image_processor(ViTConfig(image_size=(24, 40))).size == {"height": 24, "width": 40}


def test_image_column_batches_and_count(image_ds, processor):
    out = batches(image_ds, processor, num_samples=21, batch_size=8)
    assert [b.shape for b in out] == [(8, 3, 32, 32), (8, 3, 32, 32), (5, 3, 32, 32)]
    assert all(b.dtype == torch.float32 for b in out)
    # the sample is the first rows of Dataset.shuffle(seed), processed like the model's processor would
    expected = reference(list(image_ds.shuffle(seed=0).select(range(21))["image"]), processor)
    torch.testing.assert_close(torch.cat(out), expected)


def test_determinism(image_ds, processor):
    first = torch.cat(batches(image_ds, processor, num_samples=10, seed=3))
    torch.testing.assert_close(torch.cat(batches(image_ds, processor, num_samples=10, seed=3)), first)
    assert not torch.equal(torch.cat(batches(image_ds, processor, num_samples=10, seed=4)), first)


def test_img_and_user_named_columns(image_ds, processor):
    expected = torch.cat(batches(image_ds, processor, num_samples=6))
    renamed = image_ds.rename_column("image", "img")
    assert find_image_column(renamed) == "img"
    torch.testing.assert_close(torch.cat(batches(renamed, processor, num_samples=6)), expected)
    custom = image_ds.rename_column("image", "picture")
    torch.testing.assert_close(torch.cat(batches(custom, processor, num_samples=6, image_column="picture")), expected)
    assert find_image_column(custom) == "picture"  # no known name: the first column typed datasets.Image
    assert find_image_column(custom, "label") == "label"


def test_pixel_values_column_used_as_is(image_ds, processor):
    pv = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ds = Dataset.from_dict({"pixel_values": pv.numpy(), "label": list(range(12))})
    assert find_image_column(ds) == "pixel_values"
    out = torch.cat(batches(ds, None, num_samples=12, batch_size=5))
    order = np.random.default_rng(0).permutation(12)
    torch.testing.assert_close(out, pv[order])


def test_numpy_grayscale_column(digits, pil_images, processor):
    ds = Dataset.from_dict({"image": list(digits[0])})  # 2-D uint8 arrays, stored as nested lists
    out = torch.cat(batches(ds, processor, num_samples=N))
    order = np.random.default_rng(0).permutation(N)
    torch.testing.assert_close(out, reference([pil_images[i] for i in order], processor))


def test_iterable_dataset(image_ds, processor):
    stream = image_ds.to_iterable_dataset()
    out = batches(stream, processor, num_samples=10, batch_size=4)
    assert [len(b) for b in out] == [4, 4, 2] and out[0].shape[1:] == (3, 32, 32)
    torch.testing.assert_close(torch.cat(batches(stream, processor, num_samples=10, batch_size=4)), torch.cat(out))
    assert find_image_column(stream.select_columns(["image"]).map(lambda x: x)) == "image"


def test_dataset_dict_split(image_ds, processor):
    dd = DatasetDict({"train": image_ds.select(range(20)), "validation": image_ds.select(range(20, 30))})
    with pytest.warns(UserWarning, match="only 10 examples"):
        out = batches(dd, processor, split="validation", num_samples=50)
    assert sum(len(b) for b in out) == 10
    with pytest.raises(ValueError, match=r"no split 'test'; available splits: \['train', 'validation'\]"):
        batches(dd, processor, split="test")


def test_local_image_folder(tmp_path, digits, pil_images, processor):
    images, labels = digits
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        (tmp_path / str(label)).mkdir(exist_ok=True)
        Image.fromarray(img).save(tmp_path / str(label) / f"{i}.png")
    loaded = load_calibration_dataset(str(tmp_path))
    assert len(loaded) == N and find_image_column(loaded) == "image"
    out = batches(str(tmp_path), processor, num_samples=16, batch_size=16)
    assert [b.shape for b in out] == [(16, 3, 32, 32)]


def test_save_to_disk(tmp_path, image_ds, processor):
    image_ds.save_to_disk(tmp_path / "ds")
    DatasetDict({"calib": image_ds}).save_to_disk(tmp_path / "dd")
    expected = torch.cat(batches(image_ds, processor, num_samples=8))
    torch.testing.assert_close(torch.cat(batches(str(tmp_path / "ds"), processor, num_samples=8)), expected)
    torch.testing.assert_close(
        torch.cat(batches(str(tmp_path / "dd"), processor, num_samples=8, split="calib")), expected
    )
    assert sorted(p.name for p in (tmp_path / "ds").iterdir() if p.name.startswith("cache-")) == []


def test_fewer_examples_than_requested(image_ds, processor):
    with pytest.warns(UserWarning, match="only 5 examples, fewer than num_samples=64"):
        out = batches(image_ds.select(range(5)), processor, num_samples=64)
    assert sum(len(b) for b in out) == 5
    with pytest.warns(UserWarning, match="only 5 examples"):
        out = batches(image_ds.select(range(5)).to_iterable_dataset(), processor, num_samples=64)
    assert sum(len(b) for b in out) == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batches(image_ds, processor, num_samples=N)


def test_errors(image_ds, processor):
    with pytest.raises(ValueError, match="Calibration dataset is empty"):
        batches(image_ds.select([]), processor)
    for features in (None, image_ds.features):  # unknown columns (peeks at the first example) and known ones
        empty_stream = datasets.IterableDataset.from_generator(lambda: iter(()), features=features)
        with pytest.raises(ValueError, match="Calibration dataset is empty"):
            batches(empty_stream, processor, image_column=None if features is None else "image")
    with pytest.raises(ValueError, match=r"no image column: found columns \['a', 'b'\]; name it with image_column="):
        batches(Dataset.from_dict({"a": [1, 2], "b": [3, 4]}), processor)
    with pytest.raises(ValueError, match=r"image_column='photo' is not a column.*\['image', 'label'\]"):
        batches(image_ds, processor, image_column="photo")
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match=f"num_samples must be a positive integer, got {bad}"):
            batches(image_ds, processor, num_samples=bad)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        batches(image_ds, processor, batch_size=0)
    pv = np.zeros((4, 3, 32, 32), np.float32)
    pv[2, 1, 5, 5] = np.nan
    with pytest.raises(ValueError, match="Calibration batch contains NaN/inf pixel values"):
        batches(Dataset.from_dict({"pixel_values": pv}), None, num_samples=4)
    with pytest.raises(ValueError, match=r"must be one preprocessed image of shape \(3, H, W\), got shape \(32, 32\)"):
        batches(Dataset.from_dict({"pixel_values": np.zeros((2, 32, 32), np.float32)}), None, num_samples=2)
    with pytest.raises(ValueError, match="holds raw images, which need an image processor"):
        batches(image_ds, None, num_samples=4)


def test_unloadable_string_names_the_input(tmp_path):
    missing = str(tmp_path / "no-such-calibration-set")
    with pytest.raises(ValueError, match="Could not load the calibration dataset '.*no-such-calibration-set'"):
        load_calibration_dataset(missing)
    with pytest.raises(TypeError, match="Cannot use a list as calibration dataset"):
        load_calibration_dataset([1, 2])


def test_resolve_image_processor(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty = tmp_path / "no-processor"
    empty.mkdir()
    CONFIG.save_pretrained(empty)
    fallback = resolve_image_processor(str(empty), CONFIG)
    assert fallback.size == {"height": 32, "width": 32} and list(fallback.image_mean) == [0.485, 0.456, 0.406]
    assert resolve_image_processor(None, CONFIG).to_dict() == fallback.to_dict()

    saved = tmp_path / "with-processor"
    ViTImageProcessor(size={"height": 48, "width": 48}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        saved
    )
    loaded = resolve_image_processor(str(saved), CONFIG)
    assert loaded.size == {"height": 48, "width": 48} and list(loaded.image_mean) == [0.5] * 3
