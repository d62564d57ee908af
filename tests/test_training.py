"""Distillation fine-tuning with SNPDistillationTrainer: loss, frozen teacher, checkpoints, resume, DDP, errors."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, TrainerCallback

import optimum_snp  # noqa: F401
from optimum_snp import PruningRatios, apply_plan, build_plan
from optimum_snp.training import SNPDistillationTrainer, SNPTrainingArguments

from .conftest import tiny_model
from .test_finetune import DigitsDataset


REPO = Path(__file__).resolve().parents[1]


def teacher_and_student(kind: str, ratio: float = 0.25, train_on: DigitsDataset | None = None):
    """A tiny teacher (first fitted to `train_on`, if given) and a student pruned from it."""
    teacher = tiny_model(kind, seed=0, noisy=False, initializer_range=0.02)
    if train_on is not None:
        optimizer = torch.optim.AdamW(teacher.parameters(), lr=1e-2)
        teacher.train()
        for _ in range(80):
            loss = F.cross_entropy(teacher(train_on.pixel_values).logits, train_on.labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        teacher.eval().zero_grad(set_to_none=True)
    ratios = PruningRatios.uniform(3, qk=ratio, v=ratio, mlp=ratio, heads=ratio if train_on is not None else 0.0)
    student = apply_plan(teacher, build_plan(teacher, ratios))
    return teacher, student


def training_args(output_dir, **overrides) -> SNPTrainingArguments:
    defaults = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=16,
        per_device_eval_batch_size=32,
        learning_rate=5e-3,
        warmup_steps=5,
        logging_steps=5,
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
    )
    return SNPTrainingArguments(**{**defaults, **overrides})


def objective(trainer: SNPDistillationTrainer, data: DigitsDataset) -> float:
    """The trainer's own loss over the whole data set, in eval mode."""
    model = trainer.model.eval()
    with torch.no_grad():
        batch = {"pixel_values": data.pixel_values, "labels": data.labels}
        return trainer.compute_loss(model, batch).item()


def test_soft_distillation_lowers_loss_freezes_teacher_and_checkpoints_hold_no_teacher(tmp_path):
    data = DigitsDataset(n=64)
    # A teacher that knows the task: distilling a random teacher fights the label loss.
    teacher, student = teacher_and_student("vit", ratio=0.5, train_on=data)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    args = training_args(tmp_path / "run", num_train_epochs=12, save_strategy="epoch", save_total_limit=1)
    trainer = SNPDistillationTrainer(student, args, teacher=teacher, train_dataset=data)
    before = objective(trainer, data)
    trainer.train()
    after = objective(trainer, data)
    assert after < 0.85 * before, (before, after)

    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[name]), name
    assert not any(m is teacher for m in trainer.model.modules())

    checkpoints = sorted((tmp_path / "run").glob("checkpoint-*"))
    assert checkpoints, "Trainer saved no checkpoint"
    saved = load_file(checkpoints[-1] / "model.safetensors")
    assert set(saved) == set(student.state_dict())
    reloaded = AutoModelForImageClassification.from_pretrained(
        checkpoints[-1], attn_implementation=student.config._attn_implementation
    ).eval()
    assert type(reloaded) is type(student)
    student.eval()
    with torch.no_grad():
        x = data.pixel_values[:8]
        assert torch.equal(reloaded(x).logits, student(x).logits)


def test_deit_hard_distillation_trains_both_heads_and_evaluates(tmp_path):
    teacher, student = teacher_and_student("deit-teacher")
    assert type(student).__name__ == "SNPDeiTForImageClassificationWithTeacher"
    data = DigitsDataset(n=64)
    args = training_args(
        tmp_path / "run", num_train_epochs=12, save_strategy="no", eval_strategy="epoch", distillation_type="hard"
    )

    def accuracy(pred):
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        return {"accuracy": float((logits.argmax(-1) == pred.label_ids).mean())}

    trainer = SNPDistillationTrainer(
        student, args, teacher=teacher, train_dataset=data, eval_dataset=data, compute_metrics=accuracy
    )
    before = objective(trainer, data)
    head_before = student.distillation_classifier.weight.detach().clone()
    trainer.train()
    after = objective(trainer, data)
    assert after < 0.85 * before, (before, after)
    assert not torch.equal(student.distillation_classifier.weight, head_before)

    metrics = trainer.evaluate()
    assert metrics["eval_loss"] == pytest.approx(after, rel=1e-4)
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert any("eval_loss" in entry for entry in trainer.state.log_history[:-1]), "no eval during training"


class StepRecorder(TrainerCallback):
    """Records the steps a run takes; with `stop_at`, simulates a run interrupted after that step's checkpoint."""

    def __init__(self, stop_at: int | None = None):
        self.stop_at = stop_at
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)
        if state.global_step == self.stop_at:
            control.should_training_stop = True


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tmp_path):
    data = DigitsDataset(n=64)
    common = dict(max_steps=10, save_steps=5, save_strategy="steps")

    teacher, student = teacher_and_student("vit")
    full = SNPDistillationTrainer(
        student, training_args(tmp_path / "full", **common), teacher=teacher, train_dataset=data
    )
    full.train()

    teacher, student = teacher_and_student("vit")
    args = training_args(tmp_path / "resumed", **common)
    stopper = StepRecorder(stop_at=5)
    interrupted = SNPDistillationTrainer(student, args, teacher=teacher, train_dataset=data, callbacks=[stopper])
    interrupted.train()
    assert stopper.steps == [1, 2, 3, 4, 5]
    assert [p.name for p in (tmp_path / "resumed").glob("checkpoint-*")] == ["checkpoint-5"]

    teacher, student = teacher_and_student("vit")
    recorder = StepRecorder()
    resumed = SNPDistillationTrainer(student, args, teacher=teacher, train_dataset=data, callbacks=[recorder])
    resumed.train(resume_from_checkpoint=True)
    assert recorder.steps == [6, 7, 8, 9, 10], "the resumed run did not continue from checkpoint-5"
    full_weights, resumed_weights = full.model.state_dict(), resumed.model.state_dict()
    for name, value in full_weights.items():
        assert torch.equal(resumed_weights[name], value), name


def test_ddp_two_processes_on_cpu(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", str(REPO / "tests/ddp_train_script.py"), str(tmp_path)]
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(f"torchrun DDP run took {elapsed:.1f}s")

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for record in ranks:
        assert record["world_size"] == 2
        assert record["wrapped"] == "DistributedDataParallel"
        assert not record["teacher_in_wrapped"]
        assert record["global_step"] == 4
    assert ranks[0]["final"] == ranks[1]["final"]
    assert ranks[0]["final"] != ranks[0]["initial"], "training did not change the weights"

    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "final")
    params = dict(reloaded.named_parameters())
    assert sum(p.numel() for p in params.values()) == ranks[0]["final"]["numel"]
    total = sum(params[name].detach().double().sum().item() for name in sorted(params))
    assert total == ranks[0]["final"]["sum"]


@pytest.mark.parametrize("distillation_type", ["soft", "hard", "none"])
@pytest.mark.parametrize("kind", ["vit", "deit-teacher"])
def test_loss_formula(kind, distillation_type, tmp_path):
    teacher, student = teacher_and_student(kind)
    args = training_args(tmp_path, distillation_type=distillation_type, distillation_alpha=0.3)
    trainer = SNPDistillationTrainer(student, args, teacher=teacher)
    data = DigitsDataset(n=16)
    loss = objective(trainer, data)

    with torch.no_grad():
        out, t_logits = student(data.pixel_values), teacher(data.pixel_values).logits
    two_heads = kind == "deit-teacher"
    ce = F.cross_entropy(out.cls_logits if two_heads else out.logits, data.labels)
    s_logits = out.distillation_logits if two_heads else out.logits
    if distillation_type == "none":
        expected = ce
    elif distillation_type == "hard":
        expected = 0.3 * F.cross_entropy(s_logits, t_logits.argmax(-1)) + 0.7 * ce
    else:
        kl = F.kl_div(F.log_softmax(s_logits / 2, -1), F.softmax(t_logits / 2, -1), reduction="batchmean")
        expected = 0.3 * 4 * kl + 0.7 * ce
    assert loss == pytest.approx(expected.item(), rel=1e-5)


def test_bad_input_raises_clear_errors(tmp_path):
    teacher, student = teacher_and_student("vit")
    args = training_args(tmp_path)

    other = tiny_model("vit", num_labels=4)
    with pytest.raises(ValueError, match="teacher has labels .* but the student has .*distill from the unpruned"):
        SNPDistillationTrainer(student, args, teacher=other)

    renamed = tiny_model("vit", id2label={i: f"class_{i}" for i in range(5)})
    with pytest.raises(ValueError, match="teacher has labels"):
        SNPDistillationTrainer(student, args, teacher=renamed)

    with pytest.raises(ValueError, match="distillation_type='soft' needs a teacher"):
        SNPDistillationTrainer(student, args)
    with pytest.raises(ValueError, match="distillation_type='hard' needs a teacher"):
        SNPDistillationTrainer(student, training_args(tmp_path, distillation_type="hard"))
    SNPDistillationTrainer(student, training_args(tmp_path, distillation_type="none"))  # labels only: no teacher

    with pytest.raises(ValueError, match=r"distillation_type='kl' is not supported; use one of \['soft', 'hard'"):
        training_args(tmp_path, distillation_type="kl")
    with pytest.raises(ValueError, match="distillation_alpha"):
        training_args(tmp_path, distillation_alpha=1.5)
    with pytest.raises(ValueError, match="distillation_temperature"):
        training_args(tmp_path, distillation_temperature=0.0)


def test_dropout_set_to_covers_the_attention_dropout_and_restores():
    from optimum_snp.training import dropout_set_to

    model = tiny_model("vit", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.2)
    ratios = PruningRatios.uniform(model.config.num_hidden_layers, qk=0.5, v=0.25, mlp=0.5)
    student = apply_plan(model, build_plan(model, ratios))

    def probabilities():
        return sorted(
            (type(m).__name__, float(m.p if isinstance(m, torch.nn.Dropout) else m.attention_dropout))
            for m in student.modules()
            if isinstance(m, torch.nn.Dropout) or isinstance(getattr(m, "attention_dropout", None), float)
        )

    before = probabilities()
    assert {p for _, p in before} == {0.1, 0.2} and any(name == "SNPAttention" for name, _ in before)
    with dropout_set_to(student, 0.0):
        assert {p for _, p in probabilities()} == {0.0}
    assert probabilities() == before
    with dropout_set_to(student, None):
        assert probabilities() == before
