"""The embedded digits model: dataset, top-1 evaluation, and the atomic, cached training of `load_embedded_model`."""

from __future__ import annotations

import json
import os
import types

import numpy as np
import pytest
import torch
from torch import nn
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from optimum_snp import embedded
from optimum_snp.embedded import (
    DIGITS_IMAGE_SIZE,
    digits_dataset,
    digits_image_processor,
    embedded_model_dir,
    load_embedded_model,
    train_digits_vit,
)
from optimum_snp.evaluation import evaluate_accuracy


sklearn_datasets = pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="module")
def digits():
    return digits_dataset()


def test_digits_dataset_splits_and_columns(digits):
    assert set(digits) == {"train", "test"}
    assert (len(digits["train"]), len(digits["test"])) == (1257, 540)
    for split in digits.values():
        assert split.column_names == ["image", "label"]
        assert split.features["label"].names == [str(i) for i in range(10)]
        image = split[0]["image"]
        assert (image.mode, image.size) == ("RGB", (8, 8))


def test_digits_dataset_pixels_match_sklearn(digits):
    reference = sklearn_datasets.load_digits()
    expected = {
        np.round(img * 255 / 16).astype(np.uint8).tobytes(): int(label)
        for img, label in zip(reference.images, reference.target, strict=True)
    }
    for row in digits["test"].select(range(25)):
        pixels = np.asarray(row["image"])
        assert pixels.dtype == np.uint8 and pixels.shape == (8, 8, 3)
        assert (pixels == pixels[..., :1]).all()  # gray replicated over RGB
        assert expected[pixels[..., 0].tobytes()] == row["label"]


def test_digits_dataset_is_deterministic_and_stratified(digits):
    again = digits_dataset()
    assert again["test"]["label"] == digits["test"]["label"]
    assert np.array_equal(np.asarray(again["test"][7]["image"]), np.asarray(digits["test"][7]["image"]))
    assert digits_dataset(seed=1)["test"]["label"] != digits["test"]["label"]
    train = np.bincount(digits["train"]["label"], minlength=10)
    test = np.bincount(digits["test"]["label"], minlength=10)
    assert np.all(np.abs(test - 0.3 * (train + test)) <= 1)


def tiny_classifier(seed: int = 0) -> ViTForImageClassification:
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=DIGITS_IMAGE_SIZE,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=10,
        initializer_range=1.0,  # spread the logits so the predictions are not all one class
    )
    return ViTForImageClassification(config)


def test_evaluate_accuracy_matches_hand_computed_accuracy(digits):
    split = digits["test"].select(range(40))
    model, processor = tiny_classifier(), digits_image_processor()
    model.train()
    with torch.no_grad():
        pixel_values = processor(list(split["image"]), return_tensors="pt")["pixel_values"]
        model.eval()
        predictions = model(pixel_values=pixel_values).logits.argmax(-1)
    model.train()
    expected = (predictions == torch.tensor(split["label"])).float().mean().item()
    assert len(set(predictions.tolist())) > 1

    top1 = evaluate_accuracy(model, split, processor, batch_size=7, show_progress=False)["top1"]
    assert 0.0 <= top1 <= 1.0
    assert top1 == pytest.approx(expected)
    assert model.training  # the caller's mode is restored


def test_evaluate_accuracy_accepts_any_model_with_logits(digits):
    split = digits["test"].select(range(30))

    class Oracle(nn.Module):
        """Predicts the labels it was given, in order, then class 0: accuracy is known in advance."""

        def __init__(self, labels):
            super().__init__()
            self.labels, self.seen = labels, 0
            self.dummy = nn.Parameter(torch.zeros(1))

        def forward(self, pixel_values):
            batch = pixel_values.shape[0]
            labels = torch.tensor(self.labels[self.seen : self.seen + batch])
            self.seen += batch
            return types.SimpleNamespace(logits=nn.functional.one_hot(labels, 10).float())

    wrong = [(y + 1) % 10 if i % 3 == 0 else y for i, y in enumerate(split["label"])]
    top1 = evaluate_accuracy(Oracle(wrong), split, digits_image_processor(), batch_size=8, show_progress=False)["top1"]
    assert top1 == pytest.approx(20 / 30)


def test_evaluate_accuracy_names_a_missing_column(digits):
    with pytest.raises(ValueError, match="'pixels'"):
        evaluate_accuracy(tiny_classifier(), digits["test"], digits_image_processor(), image_column="pixels")


def test_embedded_model_dir_locations(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTIMUM_SNP_CACHE", str(tmp_path / "cache"))
    assert embedded_model_dir() == str(tmp_path / "cache" / "digits-vit")
    assert embedded_model_dir(str(tmp_path / "mine")) == str(tmp_path / "mine")
    monkeypatch.delenv("OPTIMUM_SNP_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert embedded_model_dir() == str(tmp_path / "home" / ".cache" / "optimum_snp" / "digits-vit")


class FakeTrainer:
    """Stands in for `train_digits_vit`: writes the expected files instantly, or fails half-way."""

    def __init__(self, fail: bool = False):
        self.calls, self.fail = [], fail

    def __call__(self, output_dir, show_progress=True, **kwargs):
        self.calls.append(output_dir)
        for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
            with open(os.path.join(output_dir, name), "w") as f:
                f.write("{}")
        if self.fail:
            raise RuntimeError("interrupted")
        with open(os.path.join(output_dir, "training.json"), "w") as f:
            json.dump({"run": len(self.calls)}, f)
        return {"run": len(self.calls)}


def run_number(model_dir):
    with open(os.path.join(model_dir, "training.json")) as f:
        return json.load(f)["run"]


def test_load_embedded_model_trains_once_then_reuses_the_cache(tmp_path, monkeypatch):
    trainer = FakeTrainer()
    monkeypatch.setattr(embedded, "train_digits_vit", trainer)
    monkeypatch.setenv("OPTIMUM_SNP_CACHE", str(tmp_path))

    path = load_embedded_model(show_progress=False)
    assert path == str(tmp_path / "digits-vit") and run_number(path) == 1
    assert os.path.dirname(trainer.calls[0]) == str(tmp_path)  # trained next to the final folder
    assert load_embedded_model() == path and len(trainer.calls) == 1

    assert load_embedded_model(retrain=True) == path
    assert len(trainer.calls) == 2 and run_number(path) == 2
    assert os.listdir(tmp_path) == ["digits-vit"]  # no temp or old folder left


def test_load_embedded_model_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "train_digits_vit", FakeTrainer(fail=True))
    with pytest.raises(RuntimeError, match="interrupted"):
        load_embedded_model(str(tmp_path / "model"))
    assert os.listdir(tmp_path) == []

    monkeypatch.setattr(embedded, "train_digits_vit", FakeTrainer())
    path = load_embedded_model(str(tmp_path / "model"))
    monkeypatch.setattr(embedded, "train_digits_vit", FakeTrainer(fail=True))
    with pytest.raises(RuntimeError):
        load_embedded_model(path, retrain=True)
    assert os.listdir(tmp_path) == ["model"] and run_number(path) == 1  # the old model is untouched


def test_load_embedded_model_keeps_a_concurrent_winner(tmp_path, monkeypatch):
    final = tmp_path / "model"
    other = FakeTrainer()

    def slower_trainer(output_dir, **kwargs):
        FakeTrainer()(output_dir)
        os.makedirs(final)  # another process finishes first
        other(str(final))

    monkeypatch.setattr(embedded, "train_digits_vit", slower_trainer)
    assert load_embedded_model(str(final)) == str(final)
    assert os.listdir(tmp_path) == ["model"] and len(other.calls) == 1


def test_load_embedded_model_refuses_a_foreign_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "train_digits_vit", FakeTrainer())
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="retrain=True"):
        load_embedded_model(str(tmp_path))
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_train_digits_vit_one_epoch_is_loadable(tmp_path, digits):
    metrics = train_digits_vit(str(tmp_path), epochs=1, show_progress=False, batch_size=128)  # ~5 s on 2 cores
    with open(tmp_path / "training.json") as f:
        assert json.load(f) == metrics
    assert metrics["epochs"] == 1 and "transformers" in metrics["versions"]
    model = ViTForImageClassification.from_pretrained(tmp_path)
    processor = ViTImageProcessor.from_pretrained(tmp_path)
    assert model.config.id2label[3] == "3" and model.config.hidden_size == 96
    assert processor.size == {"height": DIGITS_IMAGE_SIZE, "width": DIGITS_IMAGE_SIZE}
    assert evaluate_accuracy(model, digits["test"], processor, show_progress=False)["top1"] == pytest.approx(
        metrics["top1"], abs=1e-6
    )
