"""Fine-tune a pruned student with knowledge distillation from the unpruned teacher.

`SNPDistillationTrainer` is a `transformers.Trainer`: checkpoints, evaluation, resuming and torchrun/accelerate
DDP work as in any Trainer run. The teacher is kept outside `self.model`, so it is never wrapped by DDP, never
handed to the optimizer and never written to a checkpoint.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainingArguments

from .utils import mean_pool


DISTILLATION_TYPES = ("soft", "hard", "none")
# feature-extraction students (no logits): what is matched to the teacher's last hidden states
EMBEDDING_LOSSES = ("pooled", "pooled+tokens", "pooled+layers")


@dataclass
class SNPTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the knowledge-distillation options of `SNPDistillationTrainer`."""

    distillation_alpha: float = field(
        default=0.5,
        metadata={
            "help": "Weight of the distillation term; the label cross entropy gets 1 - alpha. For a DeiT student "
            "with a distillation head, the distillation term trains that head and the label term the class head."
        },
    )
    distillation_temperature: float = field(
        default=2.0,
        metadata={"help": "Softmax temperature T of soft distillation; the KL term is scaled by T^2."},
    )
    distillation_type: str = field(
        default="soft",
        metadata={
            "help": "'soft': KL divergence to the teacher's softened distribution; 'hard': cross entropy against the "
            "teacher's argmax (DeiT hard distillation); 'none': plain cross entropy on the labels, no teacher.",
            "choices": list(DISTILLATION_TYPES),
        },
    )

    embedding_loss: str = field(
        default="pooled",
        metadata={
            "help": "Feature-extraction students (no logits): 'pooled': 1 - cosine of the mean-pooled embeddings; "
            "'pooled+tokens': plus the mean of 1 - cosine over every real token's hidden state (a target per token, "
            "not per sentence); 'pooled+layers': plus that mean for the output of every layer (layer-wise "
            "distillation, as in TinyBERT and CoFi).",
            "choices": list(EMBEDDING_LOSSES),
        },
    )

    student_dropout: str | float = field(
        default="auto",
        metadata={
            "help": "The student's dropout while it trains: 'auto' turns it off for feature-extraction students "
            "(embedding distillation reproduces the teacher's outputs; on all-MiniLM-L6-v2 pruned to 50% of its "
            "MACs, 2 epochs: cosine / Spearman 0.934 / 0.923 with its dropout of 0.1, 0.942 / 0.936 without) and "
            "keeps the model's own for students with a task head; 'keep' always keeps it; a number in [0, 1) sets "
            "every dropout to it (nn.Dropout modules and the attention dropout of the SNP model families). Restored "
            "when training ends."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        dropout = self.student_dropout
        if isinstance(dropout, str) and dropout not in ("auto", "keep"):
            try:  # from the command line (HfArgumentParser) a number arrives as a string
                dropout = self.student_dropout = float(dropout)
            except ValueError:
                pass
        if not (dropout in ("auto", "keep") or (_is_number(dropout) and 0.0 <= dropout < 1.0)):
            raise ValueError(
                f"student_dropout={dropout!r} is not supported; use 'auto', 'keep' or a probability in [0, 1)."
            )
        if self.embedding_loss not in EMBEDDING_LOSSES:
            raise ValueError(
                f"embedding_loss={self.embedding_loss!r} is not supported; use one of {list(EMBEDDING_LOSSES)}."
            )
        if self.distillation_type not in DISTILLATION_TYPES:
            raise ValueError(
                f"distillation_type={self.distillation_type!r} is not supported; use one of {list(DISTILLATION_TYPES)}."
            )
        if not 0.0 <= self.distillation_alpha <= 1.0:
            raise ValueError(f"distillation_alpha={self.distillation_alpha} must lie in [0, 1].")
        if self.distillation_temperature <= 0:
            raise ValueError(f"distillation_temperature={self.distillation_temperature} must be > 0.")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@contextlib.contextmanager
def dropout_set_to(model: nn.Module, p: float | None):
    """While active, every dropout of `model` has probability `p` (nn.Dropout modules, and the float
    `attention_dropout` that attention modules pass to their attention kernel); the previous values come back
    afterwards. `p` None: nothing changes."""
    saved = []
    if p is not None:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                saved.append((module, "p", module.p))
            elif _is_number(getattr(module, "attention_dropout", None)):
                saved.append((module, "attention_dropout", module.attention_dropout))
        for module, name, _ in saved:
            setattr(module, name, float(p))
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def _label_set(model: nn.Module) -> tuple[int, dict[int, str]] | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    return config.num_labels, {int(k): v for k, v in (getattr(config, "id2label", None) or {}).items()}


def _describe(labels: tuple[int, dict[int, str]], shown: int = 5) -> str:
    num_labels, id2label = labels
    items = sorted(id2label.items())
    text = ", ".join(f"{k}: {v!r}" for k, v in items[:shown]) + (", ..." if len(items) > shown else "")
    return f"{{{text}}} ({num_labels} classes)"


def _check_same_labels(teacher: nn.Module, student: nn.Module) -> None:
    teacher_labels, student_labels = _label_set(teacher), _label_set(student)
    if teacher_labels is None or student_labels is None:
        return
    if teacher_labels != student_labels:
        (_, t_names), (_, s_names) = teacher_labels, student_labels
        differ = sorted(k for k in t_names.keys() | s_names.keys() if t_names.get(k) != s_names.get(k))
        where = f" (first difference at id {differ[0]})" if differ else ""
        raise ValueError(
            f"The teacher has labels {_describe(teacher_labels)} but the student has {_describe(student_labels)}"
            f"{where}; distill from the unpruned model the student was pruned from (same num_labels and id2label)."
        )


class SNPDistillationTrainer(Trainer):
    """`Trainer` whose loss distills the teacher's logits into the (pruned) student.

    `loss = alpha * distill + (1 - alpha) * cross_entropy(student, labels)`, with `distill` the temperature-scaled
    KL divergence ("soft") or the cross entropy against the teacher's argmax ("hard"). A student with a
    distillation head (`SNPDeiTForImageClassificationWithTeacher`) learns the labels with its class head and the
    teacher with its distillation head, as in DeiT. The teacher is frozen (`eval()`, `requires_grad_(False)`) and
    moved to the student's device on first use.
    """

    # compute_loss returns a per-batch mean, so the Trainer divides it by the gradient accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | None = None,
        args: TrainingArguments | None = None,
        teacher: nn.Module | None = None,
        **kwargs,
    ):
        if args is None:
            args = SNPTrainingArguments(output_dir="trainer_output")
        # Plain TrainingArguments carry no distillation options: they get SNPTrainingArguments' defaults.
        defaults = SNPTrainingArguments.__dataclass_fields__
        self.distillation_type = getattr(args, "distillation_type", defaults["distillation_type"].default)
        self.distillation_alpha = getattr(args, "distillation_alpha", defaults["distillation_alpha"].default)
        self.distillation_temperature = getattr(
            args, "distillation_temperature", defaults["distillation_temperature"].default
        )
        if teacher is None and self.distillation_type != "none":
            raise ValueError(
                f"distillation_type={self.distillation_type!r} needs a teacher: pass teacher=<the unpruned model>, "
                "or set distillation_type='none' to fine-tune on the labels only."
            )
        if teacher is not None:
            if teacher is model:
                raise ValueError("The teacher is the student itself; pass the unpruned model as teacher.")
            if model is not None:
                _check_same_labels(teacher, model)
            teacher.eval().requires_grad_(False)
        self.teacher = teacher
        super().__init__(model=model, args=args, **kwargs)
        # Students with a distillation head take no `labels` argument, so the Trainer would find no label names and
        # never compute an eval loss; the labels are consumed here, in compute_loss.
        if self.args.label_names is None:
            self.label_names = ["labels"]

    def student_dropout(self, model: nn.Module | None = None) -> float | None:
        """The dropout probability the student (`model`, by default `self.model`) trains with
        (`args.student_dropout`), or None for its own."""
        model = self.model if model is None else model
        value = getattr(self.args, "student_dropout", "auto")
        if value == "keep" or model is None:
            return None
        if value == "auto":
            return 0.0 if _is_headless(model) else None
        return float(value)

    def train(self, *args, **kwargs):
        # with `model_init` (e.g. a hyperparameter search) train() builds a new student: `call_model_init` sets its
        # dropout in the same stack, so every student trained here is restored when training ends
        with contextlib.ExitStack() as stack:
            stack.enter_context(dropout_set_to(self.model, self.student_dropout()))
            self._dropout_stack = stack
            try:
                return super().train(*args, **kwargs)
            finally:
                self._dropout_stack = None

    def call_model_init(self, trial=None):
        model = super().call_model_init(trial)
        stack = getattr(self, "_dropout_stack", None)
        if stack is not None:
            stack.enter_context(dropout_set_to(model, self.student_dropout(model)))
        return model

    def _teacher_outputs(self, inputs: dict):
        teacher = self.teacher
        param = next(teacher.parameters(), None)
        first = next(v for v in inputs.values() if torch.is_tensor(v))
        if param is not None and param.device != first.device:
            teacher.to(first.device)
        dtype = param.dtype if param is not None and param.is_floating_point() else None
        cast = {
            k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() and dtype else v for k, v in inputs.items()
        }
        with torch.no_grad():
            return teacher(**cast)  # a DeiT teacher with two heads answers with their average in `.logits`

    def _distillation_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        if self.distillation_type == "hard":
            return F.cross_entropy(student_logits, teacher_logits.argmax(dim=-1))
        t = self.distillation_temperature
        return (
            F.kl_div(
                F.log_softmax(student_logits / t, dim=-1),
                F.log_softmax(teacher_logits / t, dim=-1),
                reduction="batchmean",
                log_target=True,
            )
            * t
            * t
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        if getattr(self.args, "embedding_loss", "pooled") == "pooled+layers" and _is_headless(model):
            inputs["output_hidden_states"] = True  # every layer's output, of the student and of the teacher
        outputs = model(**inputs)
        if getattr(outputs, "logits", None) is None and getattr(outputs, "last_hidden_state", None) is not None:
            loss = self._embedding_loss(outputs, inputs)  # a feature-extraction model: distil its embeddings
            return (loss, outputs) if return_outputs else loss
        if labels is None:
            raise ValueError(
                f"SNPDistillationTrainer needs a `labels` entry in every batch; got keys {sorted(inputs)}."
            )
        two_heads = getattr(outputs, "distillation_logits", None) is not None
        label_logits = (outputs.cls_logits if two_heads else outputs.logits).float()
        mask = inputs.get("attention_mask")
        if label_logits.dim() == 3:  # token classification: one prediction per token (labels -100 are ignored)
            label_loss = F.cross_entropy(label_logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        else:
            label_loss = F.cross_entropy(label_logits, labels)
        if self.teacher is None or self.distillation_type == "none":
            loss = label_loss
        else:
            teacher_logits = self._teacher_outputs(inputs).logits.float()
            distill_logits = (outputs.distillation_logits if two_heads else outputs.logits).float()
            if distill_logits.dim() == 3:  # per real token
                keep = mask.bool() if mask is not None else torch.ones(distill_logits.shape[:2], dtype=torch.bool)
                distill_logits, teacher_logits = distill_logits[keep], teacher_logits[keep.to(teacher_logits.device)]
            distill_loss = self._distillation_loss(distill_logits, teacher_logits)
            alpha = self.distillation_alpha
            loss = alpha * distill_loss + (1.0 - alpha) * label_loss
        return (loss, outputs) if return_outputs else loss

    def _embedding_loss(self, outputs, inputs: dict) -> torch.Tensor:
        """1 - cosine between the student's and the teacher's mean-pooled embeddings (over the real tokens), the
        objective of a sentence encoder; the teacher is the unpruned model, no labels needed."""
        if self.teacher is None:
            raise ValueError(
                "A feature-extraction model (no logits) is fine-tuned by distilling its embeddings from the unpruned "
                "model: pass teacher=<the unpruned model>."
            )
        kind = getattr(self.args, "embedding_loss", "pooled")
        teacher_outputs = self._teacher_outputs(inputs)
        student = outputs.last_hidden_state.float()
        teacher = teacher_outputs.last_hidden_state.float().to(student.device)
        mask = inputs.get("attention_mask")
        mask = torch.ones(student.shape[:2], device=student.device) if mask is None else mask.to(student.dtype)

        def per_token(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # mean 1 - cosine over the real tokens
            return (
                (1 - F.cosine_similarity(s.float(), t.float().to(s.device), dim=-1)) * mask
            ).sum() / mask.sum().clamp_min(1)

        loss = (1 - F.cosine_similarity(mean_pool(student, mask), mean_pool(teacher, mask), dim=-1)).mean()
        if kind == "pooled+tokens":
            loss = loss + per_token(student, teacher)
        elif kind == "pooled+layers":  # hidden_states[0] is the embeddings' output; then one per layer
            pairs = list(zip(outputs.hidden_states[1:], teacher_outputs.hidden_states[1:], strict=True))
            loss = loss + sum(per_token(s, t) for s, t in pairs) / len(pairs)
        return loss


def _is_headless(model) -> bool:
    """Whether `model` (possibly wrapped, e.g. by DistributedDataParallel) is a base model without a task head: a
    feature-extraction model, whose embeddings the trainer distils (transformers' `base_model` is the model itself)."""
    model = getattr(model, "module", model)
    return getattr(model, "base_model", None) is model


__all__ = ["SNPTrainingArguments", "SNPDistillationTrainer", "DISTILLATION_TYPES"]
