"""The shipped accuracy metric, `evaluate_accuracy`, and the model card with its pruning-profile plot."""

from __future__ import annotations

import os

import evaluate
import numpy as np
import pytest
import torch
from huggingface_hub import metadata_load

from optimum_snp import SNPConfig, SNPPruner
from optimum_snp.calibration import derive_image_processor
from optimum_snp.card import PLOT_NAME, plot_pruning_profile, write_model_card
from optimum_snp.embedded import digits_dataset
from optimum_snp.evaluation import evaluate_accuracy
from optimum_snp.metrics import METRIC_PATH, load_accuracy_metric
from tests.conftest import tiny_model


# 5 examples x 6 classes; the reference's rank (1 = best) is in the comment
LOGITS = np.array(
    [
        [0.1, 0.5, 0.2, 0.0, 0.3, 0.9],  # label 5: rank 1
        [2.0, 1.0, 0.0, -1.0, 0.5, 0.4],  # label 1: rank 2
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # label 0: rank 6
        [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 4: rank 5
        [1.0, 1.0, 0.0, 0.0, 0.0, 0.0],  # label 1: tied with class 0, which argmax picks: rank 2
    ],
    dtype=np.float32,
)
LABELS = [5, 1, 0, 4, 1]
DIGITS = {"name": "digits", "type": "sklearn-digits", "split": "test"}


@pytest.fixture(scope="module")
def digits():
    return digits_dataset()


@pytest.fixture(scope="module")
def pruned_report():
    pruner = SNPPruner(tiny_model("deit"))
    config = SNPConfig(qk_ratio=0.5, mlp_ratio=0.25, criterion="magnitude", reconstruct="none")
    pruner.prune(config, show_progress=False)
    return pruner.report, config.to_dict()


# ---- metric ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [METRIC_PATH, os.path.join(METRIC_PATH, "snp_accuracy.py")])
def test_metric_loads_offline_and_scores_logits(monkeypatch, path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    metric = evaluate.load(path)
    result = metric.compute(predictions=LOGITS, references=LABELS)
    assert result == pytest.approx({"top1": 1 / 5, "top5": 4 / 5})
    assert result["top1"] == np.mean(LOGITS.argmax(-1) == np.array(LABELS))


def test_metric_batches_class_ids_and_small_heads(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metric = load_accuracy_metric()
    metric.add_batch(predictions=LOGITS[:2], references=LABELS[:2])
    metric.add_batch(predictions=LOGITS[2:], references=LABELS[2:])
    assert metric.compute() == pytest.approx({"top1": 1 / 5, "top5": 4 / 5})
    assert metric.compute(predictions=[3, 1, 2, 0], references=[3, 1, 0, 0]) == {"top1": 0.75}
    # fewer classes than k: top-1 only; another k is reported under its own key
    assert metric.compute(predictions=[[0.2, 0.8], [0.6, 0.4]], references=[1, 1]) == {"top1": 0.5}
    assert metric.compute(predictions=LOGITS, references=LABELS, k=2) == pytest.approx({"top1": 0.2, "top2": 0.6})


# ---- evaluate_accuracy -------------------------------------------------------------------------------------
def test_evaluate_accuracy_matches_argmax(digits):
    model = tiny_model("vit", num_labels=10).train()
    processor = derive_image_processor(model.config)
    result = evaluate_accuracy(model, digits, processor, max_samples=64, batch_size=24, show_progress=False)

    test = digits["test"].select(range(64))
    with torch.no_grad():
        inputs = processor(images=list(test["image"]), return_tensors="pt")["pixel_values"]
        logits = model.eval()(pixel_values=inputs).logits
    labels = torch.tensor(test["label"])
    top1 = (logits.argmax(-1) == labels).float().mean().item()
    top5 = (logits.topk(5, dim=-1).indices == labels[:, None]).any(-1).float().mean().item()
    assert result["num_samples"] == 64
    assert result["top1"] == pytest.approx(top1)
    assert result["top5"] == pytest.approx(top5)


def test_evaluate_accuracy_restores_training_mode_and_reads_iterable(digits):
    model = tiny_model("deit", num_labels=10).train()
    processor = derive_image_processor(model.config)
    test = digits["test"].select(range(20))
    on_dataset = evaluate_accuracy(model, test, processor, batch_size=8, show_progress=False)
    assert model.training
    streamed = evaluate_accuracy(model, test.to_iterable_dataset(), processor, batch_size=8, show_progress=False)
    assert streamed == pytest.approx(on_dataset)


def test_evaluate_accuracy_errors(digits):
    model = tiny_model("vit")  # 5 labels, digits has 10
    processor = derive_image_processor(model.config)
    with pytest.raises(ValueError, match=r"has no label column 'label': found columns \['image'\]; pass label_column"):
        evaluate_accuracy(model, digits["test"].remove_columns("label"), processor, show_progress=False)
    with pytest.raises(ValueError, match=r"predicts 5 classes .* holds the label 9"):
        evaluate_accuracy(model, digits, processor, show_progress=False)
    with pytest.raises(ValueError, match="no split 'validation'"):
        evaluate_accuracy(model, digits, processor, split="validation", show_progress=False)


# ---- model card --------------------------------------------------------------------------------------------
def _metrics(metadata: dict) -> dict:
    [entry] = metadata["model-index"]
    [result] = entry["results"]
    assert result["task"]["type"] == "image-classification"
    assert result["dataset"] == {"name": "digits", "type": "sklearn-digits", "split": "test"}
    return {metric["name"]: metric["value"] for metric in result["metrics"]}


def test_plot_pruning_profile(tmp_path, pruned_report):
    report, _ = pruned_report
    path = plot_pruning_profile(report, tmp_path / "plots" / "profile.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no 'layers' entry"):
        plot_pruning_profile({}, tmp_path / "empty.png")


def test_model_card_is_written_then_updated(tmp_path, pruned_report):
    report, config = pruned_report
    save_dir = tmp_path / "tiny-deit-snp"
    results = {
        "original": {"top1": 0.97, "top5": 1.0, "num_samples": 540},
        "pruned": {"top1": 0.91, "top5": 0.995},
        "dataset": DIGITS,
    }
    path = write_model_card(save_dir, report, config, results, base_model="facebook/deit-tiny-patch16-224")
    assert path == os.path.join(save_dir, "README.md")

    metadata = metadata_load(path)
    assert metadata["base_model"] == "facebook/deit-tiny-patch16-224"
    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == "image-classification"
    assert {"snp", "pruning", "optimum-snp", "snp_deit"} <= set(metadata["tags"])
    metrics = _metrics(metadata)
    assert metrics["Top-1 accuracy (original model)"] == 0.97
    assert metrics["Top-1 accuracy (after SNP pruning)"] == 0.91
    assert metrics["Top-5 accuracy (after SNP pruning)"] == 0.995

    text = open(path).read()
    assert (save_dir / PLOT_NAME).is_file()
    assert f"![pruning profile]({PLOT_NAME})" in text
    assert "trust_remote_code=True" in text and "import optimum_snp" in text
    assert "SNP: Structured Neuron-level Pruning to Preserve Attention Scores" in text
    assert "Shim, Kyunghwan and Yun, Jaewoong and Choi, Shinkook" in text and "2404.11630" in text
    assert '"qk_ratio": 0.5' in text
    assert f"{report['params']['before'] / 1e3:.2f}K" in text  # the size table

    # a later call with only the fine-tuned accuracy keeps the earlier results and the base model
    write_model_card(save_dir, report, config, {"fine-tuned": {"top1": 0.96, "top5": None}})
    metadata = metadata_load(path)
    assert metadata["base_model"] == "facebook/deit-tiny-patch16-224"
    assert list(metadata["snp_results"]) == ["original", "pruned", "fine-tuned", "dataset"]
    metrics = _metrics(metadata)
    assert metrics["Top-1 accuracy (original model)"] == 0.97
    assert metrics["Top-1 accuracy (after SNP pruning)"] == 0.91
    assert metrics["Top-1 accuracy (after fine-tuning)"] == 0.96
    assert "Top-5 accuracy (after fine-tuning)" not in metrics
    text = open(path).read()
    assert "| After fine-tuning | 96.00% | n/a |" in text and "| Original model | 97.00% | 100.00% | 540 |" in text


def test_model_card_without_results_and_bad_results(tmp_path, pruned_report):
    report, config = pruned_report
    path = write_model_card(tmp_path / "card", report, SNPConfig(qk_ratio=0.5))
    metadata = metadata_load(path)
    assert "model-index" not in metadata and "snp_results" not in metadata
    assert "Not measured yet" in open(path).read()
    with pytest.raises(ValueError, match="no 'dataset' entry"):
        write_model_card(tmp_path / "no-dataset", report, config, {"pruned": {"top1": 0.9}})
    with pytest.raises(ValueError, match=r"results\['pruned'\] must be a dict with a numeric 'top1'"):
        write_model_card(tmp_path / "bad", report, config, {"pruned": 0.9, "dataset": DIGITS})


def test_model_card_drops_results_from_another_dataset(tmp_path, pruned_report):
    report, config = pruned_report
    results = {"original": {"top1": 0.97}, "pruned": {"top1": 0.91}, "dataset": DIGITS}
    path = write_model_card(tmp_path / "card", report, config, results)
    validation = {**DIGITS, "split": "validation"}
    with pytest.warns(UserWarning, match=r"\['original'\] were measured on"):
        write_model_card(tmp_path / "card", report, config, {"pruned": {"top1": 0.8}, "dataset": validation})
    metadata = metadata_load(path)
    assert metadata["snp_results"] == {"pruned": {"top1": 0.8}, "dataset": validation}
