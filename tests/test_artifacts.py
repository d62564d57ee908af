"""Every save of a pruned model writes the pruning files and the model card; from_pretrained reads them back."""

import json
import os

import pytest
import torch
from huggingface_hub import ModelCard, metadata_load
from transformers import AutoModelForImageClassification, ViTImageProcessor

import optimum_snp  # noqa: F401
from optimum_snp import SNPConfig, SNPPruner, apply_plan, model_size_of
from optimum_snp.artifacts import get_pruning_info, record_results, report_from_config
from optimum_snp.training import SNPDistillationTrainer, SNPTrainingArguments

from .conftest import logits_of, pixel_values, random_plan, tiny_model


DIGITS = {"name": "digits", "type": "sklearn-digits", "split": "test"}
PRUNING_FILES = {
    "config.json",
    "model.safetensors",
    "snp_config.json",
    "pruning_plan.json",
    "pruning_report.json",
    "preprocessor_config.json",
    "README.md",
    "pruning_profile.png",
}


def results_of(folder) -> dict:
    return metadata_load(os.path.join(folder, "README.md"))["snp_results"]


@pytest.fixture
def pruned():
    pruner = SNPPruner(tiny_model("deit"))
    model = pruner.prune(
        SNPConfig(qk_ratio=0.5, mlp_ratio=0.25, criterion="magnitude", reconstruct="none"), show_progress=False
    )
    return pruner, model


def test_save_pretrained_alone_writes_card_and_pruning_files(pruned, tmp_path):
    pruner, model = pruned
    record_results(model, {"original": {"top1": 0.9}, "pruned": {"top1": 0.8, "top5": 0.99}, "dataset": DIGITS})
    model.save_pretrained(tmp_path / "a")
    assert PRUNING_FILES <= set(os.listdir(tmp_path / "a"))
    metadata = metadata_load(tmp_path / "a" / "README.md")
    assert {"snp", "pruning", "optimum-snp", "snp_deit"} <= set(metadata["tags"])
    assert [r["metrics"][0]["value"] for r in metadata["model-index"][0]["results"]][:1] == [0.9]
    assert json.loads((tmp_path / "a" / "pruning_report.json").read_text()) == pruner.report

    # read back by from_pretrained, then a fine-tuned result is added: the card keeps the earlier ones
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "a")
    info = get_pruning_info(reloaded)
    assert info.report == pruner.report and info.plan.to_dict() == pruner.plan.to_dict()
    assert info.snp_config.to_dict() == get_pruning_info(model).snp_config.to_dict()
    assert isinstance(info.image_processor, ViTImageProcessor)
    assert info.results == get_pruning_info(model).results
    record_results(reloaded, {"fine-tuned": {"top1": 0.88}, "dataset": DIGITS})
    reloaded.save_pretrained(tmp_path / "b")
    assert list(results_of(tmp_path / "b")) == ["original", "pruned", "fine-tuned", "dataset"]
    assert results_of(tmp_path / "b")["pruned"] == {"top1": 0.8, "top5": 0.99}
    assert "After fine-tuning | 88.00%" in ModelCard.load(tmp_path / "b" / "README.md").text
    reloaded.set_attn_implementation(model.config._attn_implementation)
    assert torch.equal(logits_of(reloaded, pixel_values()), logits_of(model, pixel_values()))


def test_trainer_save_model_writes_the_card(pruned, tmp_path):
    _, model = pruned
    record_results(model, {"pruned": {"top1": 0.5}, "dataset": DIGITS})
    args = SNPTrainingArguments(output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True, distillation_type="none")
    trainer = SNPDistillationTrainer(model, args)
    trainer.save_model(str(tmp_path / "final"))
    assert PRUNING_FILES <= set(os.listdir(tmp_path / "final"))
    assert results_of(tmp_path / "final")["pruned"] == {"top1": 0.5}


def test_model_without_pruning_info_gets_a_card_from_its_config(tmp_path):
    original = tiny_model("vit")
    model = apply_plan(original, random_plan(original, seed=3))
    assert get_pruning_info(model) is None
    report = report_from_config(model)
    assert report["params"]["before"] == model_size_of(original).params
    assert report["macs"]["after"] == model_size_of(model).macs
    model.save_pretrained(tmp_path)
    assert {"README.md", "pruning_profile.png"} <= set(os.listdir(tmp_path))
    assert "snp_vit" in metadata_load(tmp_path / "README.md")["tags"]
    assert not (tmp_path / "snp_config.json").exists()  # nothing recorded, nothing invented


def test_save_on_a_non_main_process_writes_only_what_transformers_writes(pruned, tmp_path):
    _, model = pruned
    model.save_pretrained(tmp_path, is_main_process=False)
    assert not {"README.md", "snp_config.json"} & set(os.listdir(tmp_path))


def test_record_results_rejects_bad_results(pruned):
    _, model = pruned
    with pytest.raises(ValueError, match="numeric 'top1'"):
        record_results(model, {"pruned": 0.9, "dataset": DIGITS})
