"""Gradual SNP (optimum_snp.gradual): pruning in k steps inside distillation fine-tuning."""

import json

import datasets
import numpy as np
import pytest
import torch
from transformers import AutoModelForImageClassification, TrainerCallback

from optimum_snp import SNPConfig, SNPDistillationTrainer, SNPTrainingArguments, apply_plan, build_plan
from optimum_snp.accounting import model_size_of
from optimum_snp.adapters import get_adapter
from optimum_snp.artifacts import get_pruning_info
from optimum_snp.calibration import derive_image_processor
from optimum_snp.gradual import (
    GradualPruningCallback,
    _unwrap_optimizer,
    compose_plans,
    gradual_prune,
    step_targets,
    to_snp_model,
)
from optimum_snp.models import SNPDeiTForImageClassificationWithTeacher, SNPViTForImageClassification
from optimum_snp.ratios import PruningRatios

from .conftest import logits_of, pixel_values, tiny_model


RATIO = 0.5


def random_images(n=16, num_labels=5, seed=0):
    rng = np.random.default_rng(seed)
    return datasets.Dataset.from_dict(
        {
            "pixel_values": rng.standard_normal((n, 3, 32, 32)).astype(np.float32),
            "label": rng.integers(0, num_labels, n).tolist(),
        }
    )


def config(**kw):
    return SNPConfig(
        **{
            "target_macs_ratio": RATIO,
            "num_calibration_samples": 16,
            "num_validation_samples": 0,
            "batch_size": 8,
            **kw,
        }
    )


def pruning_steps_done(model) -> int:
    info = get_pruning_info(model)
    return len(info.report["gradual"]["steps"]) if info is not None and info.report and "gradual" in info.report else 0


class Probe(TrainerCallback):
    """Runs after the pruning callback: snapshots the model right after the last pruning step and checks, at the
    end, that training went on with the new parameters."""

    def __init__(self, data, num_steps):
        self.data, self.num_steps = data, num_steps
        self.after_last_prune = None

    def loss(self, model):
        device = next(model.parameters()).device
        batch = torch.as_tensor(np.array(self.data["pixel_values"]), dtype=torch.float32, device=device)
        labels = torch.as_tensor(self.data["label"], device=device)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            loss = torch.nn.functional.cross_entropy(model(pixel_values=batch).logits, labels).item()
        model.train(was_training)
        return loss

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if pruning_steps_done(model) == self.num_steps and self.after_last_prune is None:
            inner = _unwrap_optimizer(optimizer)
            no_decay = {id(p) for p in inner.param_groups[1]["params"]}
            self.after_last_prune = {
                "weights": {n: p.detach().clone() for n, p in model.named_parameters()},
                "loss": self.loss(model),
                "global_step": state.global_step,
                "optimizer_ids": [id(p) for g in inner.param_groups for p in g["params"]],
                "model_ids": [id(p) for p in model.parameters()],
                "state_size": len(inner.state),
                "no_decay": {n for n, p in model.named_parameters() if id(p) in no_decay},
            }

    def on_train_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        inner = _unwrap_optimizer(optimizer)
        self.end = {
            "loss": self.loss(model),
            "state_ids": {id(p) for p in inner.state},
            "model_ids": {id(p) for p in model.parameters()},
        }


@pytest.fixture(scope="module")
def gradual_run():
    original = tiny_model("vit", seed=0)
    data = random_images()
    probe = Probe(data, num_steps=2)
    before = {n: p.detach().clone() for n, p in original.named_parameters()}
    model = gradual_prune(
        original,
        config(),
        data,
        data,
        derive_image_processor(original.config),
        epochs=2,
        num_steps=2,
        learning_rate=5e-3,
        batch_size=4,
        show_progress=False,
        callbacks=[probe],
    )
    return {"original": original, "model": model, "probe": probe, "before": before}


def test_gradual_prune_reaches_the_target_as_an_snp_model(gradual_run):
    original, model = gradual_run["original"], gradual_run["model"]
    macs0 = model_size_of(original).macs
    assert type(model) is SNPViTForImageClassification
    assert model_size_of(model).macs <= RATIO * macs0
    steps = get_pruning_info(model).report["gradual"]["steps"]
    assert [s["step"] for s in steps] == [1, 2]
    # 2 epochs of 4 optimizer steps: step 1 at the start, step 2 halfway, geometric targets
    assert [s["global_step"] for s in steps] == [0, 4]
    assert steps[0]["target_macs"] == pytest.approx(macs0 * RATIO**0.5)
    assert steps[1]["target_macs"] == pytest.approx(macs0 * RATIO)
    assert steps[0]["macs_after"] <= steps[0]["target_macs"] and steps[0]["macs_after"] > steps[1]["macs_after"]
    # the caller's model is untouched (and trainable again after serving as the teacher)
    assert all(torch.equal(p, gradual_run["before"][n]) for n, p in original.named_parameters())
    assert all(p.requires_grad for p in original.parameters())
    # the plan composed over both steps describes the final architecture in the original model's indices
    info = get_pruning_info(model)
    reapplied = apply_plan(original, info.plan)
    assert get_adapter(reapplied).layer_dims() == get_adapter(model).layer_dims()
    assert info.report["macs"]["before"] == macs0 and info.report["macs"]["after"] == model_size_of(model).macs
    assert len(info.report["gradual"]["steps"]) == 2 and info.report["gradual"]["train_loss"] > 0


def test_optimizer_trains_the_new_parameters_after_the_last_prune(gradual_run):
    model, probe = gradual_run["model"], gradual_run["probe"]
    snap = probe.after_last_prune
    assert snap is not None and snap["global_step"] == 4
    assert sorted(snap["optimizer_ids"]) == sorted(snap["model_ids"])  # the optimizer holds exactly the new params
    assert snap["state_size"] == 0  # old Adam moments dropped
    assert any("layernorm" in n for n in snap["no_decay"]) and any(n.endswith("bias") for n in snap["no_decay"])
    assert not any(n.endswith("weight") and "layernorm" not in n for n in snap["no_decay"])
    assert probe.end["state_ids"] and probe.end["state_ids"] <= probe.end["model_ids"]
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), snap["weights"][n])]
    assert len(changed) == len(snap["weights"]), "some parameters were not trained after the last prune"
    assert probe.end["loss"] < snap["loss"], (snap["loss"], probe.end["loss"])


def test_gradual_model_saves_reloads_and_pushes(gradual_run, tmp_path, monkeypatch):
    model = gradual_run["model"].cpu()
    model.save_pretrained(tmp_path / "out")
    reloaded = AutoModelForImageClassification.from_pretrained(
        tmp_path / "out", attn_implementation=model.config._attn_implementation
    ).eval()
    assert type(reloaded) is type(model)
    x = pixel_values(4, seed=3)
    assert torch.equal(logits_of(reloaded, x), logits_of(model.eval(), x))
    report = json.loads((tmp_path / "out" / "pruning_report.json").read_text())
    assert [s["step"] for s in report["gradual"]["steps"]] == [1, 2]
    assert json.loads((tmp_path / "out" / "snp_config.json").read_text())["target_macs_ratio"] == RATIO
    assert "optimum-snp" in (tmp_path / "out" / "README.md").read_text()
    assert get_pruning_info(reloaded).report["gradual"]["num_steps"] == 2

    from huggingface_hub import constants

    from .hub_server import TEST_TOKEN, TEST_USER, HubServer

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    with HubServer() as hub:
        model.push_to_hub("gradual", token=TEST_TOKEN, endpoint=hub.endpoint)
        files = hub.files(f"{TEST_USER}/gradual")
    assert {"model.safetensors", "pruning_report.json", "pruning_plan.json", "README.md"} <= set(files)


def test_callback_in_a_distillation_trainer_changes_the_class_of_a_stock_deit(tmp_path):
    """Callback used directly, on a stock DeiT with a distillation head and activation checkpointing: the first step
    turns it into its SNP class in place; the teacher is the unpruned model and the logits keep their shape."""
    teacher = tiny_model("deit-teacher", seed=1)
    student = tiny_model("deit-teacher", seed=1).train()
    data = random_images(8)
    from optimum_snp.finetune import collate, training_view

    callback = GradualPruningCallback(
        config(target_macs_ratio=0.6, num_calibration_samples=8),
        calibration_dataset=data,
        num_steps=2,
        prune_at=[0, 1],
    )
    args = SNPTrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        weight_decay=0.05,
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        activation_checkpointing=True,
    )
    trainer = SNPDistillationTrainer(
        model=student,
        teacher=teacher,
        args=args,
        train_dataset=training_view(data, None),
        data_collator=collate,
        callbacks=[callback],
    )
    trainer.train()
    assert trainer.model is student and type(student) is SNPDeiTForImageClassificationWithTeacher
    assert student.is_activation_checkpointing  # switched on again for the new layers
    assert [s["global_step"] for s in callback.history] == [0, 2]
    assert model_size_of(student).macs <= 0.6 * model_size_of(teacher).macs
    x = pixel_values(2, seed=4)
    assert logits_of(student.eval(), x).shape == logits_of(teacher, x).shape
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == {
        id(p) for p in student.parameters()
    }


def test_compose_plans_matches_pruning_twice():
    model = tiny_model("vit")
    first = build_plan(model, PruningRatios.uniform(3, qk=0.25, v=0.5, mlp=0.25, heads=0.25, hidden=0.25))
    once = apply_plan(model, first)
    second = build_plan(once, PruningRatios.uniform(3, qk=0.34, v=0.5, mlp=0.5, heads=0.34, hidden=0.2))
    x = pixel_values(2)
    assert torch.equal(
        logits_of(apply_plan(once, second), x), logits_of(apply_plan(model, compose_plans(first, second)), x)
    )
    assert step_targets(100.0, 25.0, 2) == [pytest.approx(50.0), 25.0]


def test_to_snp_model_keeps_outputs_and_the_original():
    model = tiny_model("deit")
    converted = to_snp_model(model)
    assert type(converted).__name__ == "SNPDeiTForImageClassification" and converted is not model
    x = pixel_values(2)
    torch.testing.assert_close(logits_of(converted, x), logits_of(model, x))


def test_bad_input_is_a_clear_value_error():
    data = random_images(4)
    with pytest.raises(ValueError, match="target_macs_ratio"):
        GradualPruningCallback(SNPConfig(qk_ratio=0.5), calibration_dataset=data)
    with pytest.raises(ValueError, match="num_steps"):
        GradualPruningCallback(config(), calibration_dataset=data, num_steps=0)
    with pytest.raises(ValueError, match="calibration_dataset"):
        GradualPruningCallback(config(), calibration_dataset=None)
    with pytest.raises(ValueError, match="prune_at"):
        GradualPruningCallback(config(), calibration_dataset=data, num_steps=2, prune_at=[1, 0])
    with pytest.raises(ValueError, match="calibration_dataset"):
        gradual_prune(tiny_model(), config(), data, None, None, epochs=1, num_steps=1)
