"""Gradual SNP: prune in `num_steps` steps *during* distillation fine-tuning instead of once before it.

`GradualPruningCallback` is a `transformers.TrainerCallback`. At each pruning step it re-scores the model on its
current (partly fine-tuned) weights, prunes and reconstructs it with `SNPPruner` towards an intermediate MACs target,
and swaps the pruned weights into the model the Trainer is training, in place, then points the optimizer at the new
parameters. Step j of k reaches `original_macs * (final / original_macs) ** (j / k)` (geometric interpolation), the
last step exactly the final target; by default the steps start at the first optimizer step and are evenly spaced, so
the stretch after the last step is left for recovery at the final size.

    from optimum_snp.gradual import GradualPruningCallback, to_snp_model

    student = to_snp_model(model)  # the SNP class, identical weights: later swaps never change the class
    callback = GradualPruningCallback(SNPConfig(target_macs_ratio=0.5), calibration_dataset=ds, num_steps=3)
    trainer = SNPDistillationTrainer(model=student, teacher=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()
    student.save_pretrained("out")  # a normal SNP model: config, plan (w.r.t. the original), report, card

or, in one call, `gradual_prune(model, config, train_dataset, calibration_dataset, image_processor, epochs=5)`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import tempfile
import time
import warnings

import torch
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_pt_utils import get_parameter_names

from .accounting import model_size_of
from .adapters import get_adapter
from .artifacts import PruningInfo, attach_pruning_info, get_pruning_info
from .calibration import load_calibration_dataset
from .config import SNPConfig
from .finetune import collate, training_arguments, training_view
from .plan import LayerPlan, PruningPlan
from .pruner import SNPPruner
from .slicing import apply_plan
from .training import SNPDistillationTrainer
from .version import __version__


logger = logging.getLogger(__name__)

# the parameter-name patterns transformers' Trainer.get_decay_parameter_names excludes from weight decay
_NO_DECAY_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


# ---- helpers ---------------------------------------------------------------------------------------------------
def to_snp_model(model: nn.Module) -> nn.Module:
    """A copy of `model` (stock or SNP ViT/DeiT) as its SNP model class with every unit kept (identity plan): the
    same outputs, but a class that pruning steps can swap weights into without changing `__class__`. `model` is
    left unchanged; pruning info it carries (an already pruned model) is carried over."""
    adapter = get_adapter(model)
    converted = apply_plan(model, PruningPlan.identity(adapter.hidden_size, adapter.layer_dims()))
    info = get_pruning_info(model)
    if info is not None:
        attach_pruning_info(converted, copy.copy(info))
    return converted


def compose_plans(first: PruningPlan, second: PruningPlan) -> PruningPlan:
    """The plan of `first` then `second` (`second` made for the model that `first` produced), as one plan on the
    model `first` was made for."""
    first, second = first.normalized(), second.normalized()
    if len(first.layers) != len(second.layers):
        raise ValueError(f"Cannot compose plans with {len(first.layers)} and {len(second.layers)} layers.")
    layers = []
    for a, b in zip(first.layers, second.layers, strict=True):
        layers.append(
            LayerPlan(
                heads=[a.heads[h] for h in b.heads],
                qk=[[a.qk[h][i] for i in kept] for h, kept in zip(b.heads, b.qk, strict=True)],
                v=[[a.v[h][i] for i in kept] for h, kept in zip(b.heads, b.v, strict=True)],
                mlp=[a.mlp[m] for m in b.mlp],
            )
        )
    return PruningPlan(hidden=[first.hidden[c] for c in second.hidden], layers=layers, metadata=dict(second.metadata))


def step_targets(original_macs: float, final_macs: float, num_steps: int) -> list[float]:
    """MACs targets of the `num_steps` steps, geometrically interpolated; the last is exactly `final_macs`."""
    ratio = final_macs / original_macs
    return [original_macs * ratio ** (j / num_steps) for j in range(1, num_steps)] + [float(final_macs)]


def _unwrap_optimizer(optimizer):
    """The torch optimizer inside accelerate's `AcceleratedOptimizer` (or any wrapper with an `.optimizer`)."""
    inner = optimizer
    while isinstance(getattr(inner, "optimizer", None), torch.optim.Optimizer):
        inner = inner.optimizer
    return inner


def _swap_in_place(model: nn.Module, pruned: nn.Module) -> None:
    """Makes `model` (the object the Trainer holds) the pruned model: its children, direct parameters/buffers,
    config and, if needed, class are replaced by those of `pruned`."""
    for name, child in pruned.named_children():
        setattr(model, name, child)
    for name in [n for n, _ in model.named_children() if n not in pruned._modules]:
        delattr(model, name)
    for name, param in pruned._parameters.items():
        model._parameters[name] = param
    for name, buf in pruned._buffers.items():
        model._buffers[name] = buf
    model.config = pruned.config
    if type(model) is not type(pruned):
        for key, value in pruned.__dict__.items():  # attributes the new class's __init__ sets
            model.__dict__.setdefault(key, value)
        model.__class__ = type(pruned)


def _checkpointing_on(model: nn.Module) -> bool:
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # the second before transformers 5
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False


def _enable_checkpointing(model: nn.Module, args) -> None:
    """Activation checkpointing on again, with the training arguments' options (as `Trainer` does)."""
    options = dict(
        getattr(args, "activation_checkpointing_kwargs", None)
        or getattr(args, "gradient_checkpointing_kwargs", None)
        or {}
    )
    if hasattr(model, "activation_checkpointing_enable"):
        every_n_layers, offload = options.pop("every_n_layers", 1), options.pop("offload", False)
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs=options or None, every_n_layers=every_n_layers, offload=offload
        )
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options or None)


def _rebuild_optimizer(
    optimizer, model: nn.Module, old_groups: dict[str, int], old_ids: set[int], weight_decay: float
) -> None:
    """Points the optimizer's parameter groups at `model`'s (new) parameters and clears its state.

    `old_groups` maps the parameter names of the model before the swap to their group index; a new parameter of the
    same name joins that group (so weight-decay grouping is kept). A name never seen goes, as in
    `Trainer.create_optimizer`, to a group with weight decay when `get_decay_parameter_names` lists it, else to one
    without. Parameters in the groups that are not the model's (none with the Trainer's optimizer) stay.
    """
    inner = _unwrap_optimizer(optimizer)
    groups = inner.param_groups
    decay_names = set(get_parameter_names(model, [nn.LayerNorm], _NO_DECAY_PATTERNS))

    def fallback(name: str) -> int:
        wanted = decay_names.__contains__(name)
        for i, group in enumerate(groups):
            if (group.get("weight_decay", 0.0) > 0) == (wanted and weight_decay > 0):
                return i
        return 0

    new_params: list[list[nn.Parameter]] = [[] for _ in groups]
    for name, param in model.named_parameters():
        if param.requires_grad:
            index = old_groups.get(name)
            new_params[index if index is not None and index < len(groups) else fallback(name)].append(param)
    for group, params in zip(groups, new_params, strict=True):
        foreign = [p for p in group["params"] if id(p) not in old_ids]
        group["params"] = foreign + params
    inner.state.clear()


def _group_of_names(optimizer, model: nn.Module) -> tuple[dict[str, int], set[int]]:
    """(name -> index of the optimizer group holding that parameter of `model`, ids of all of `model`'s parameters)."""
    inner = _unwrap_optimizer(optimizer)
    index = {id(p): i for i, group in enumerate(inner.param_groups) for p in group["params"]}
    params = dict(model.named_parameters())
    return {n: index[id(p)] for n, p in params.items() if id(p) in index}, {id(p) for p in params.values()}


# ---- the callback ----------------------------------------------------------------------------------------------
class GradualPruningCallback(TrainerCallback):
    """Prunes the trained model with SNP in `num_steps` steps during training (see the module docstring).

    Args:
        config: the final `SNPConfig`; it must set `target_macs_ratio` (fraction of the MACs the model has when
            training starts) or `target_macs` (absolute MACs per image). Every other field (criteria, allocation,
            reconstruction, calibration size, ...) applies to every step.
        calibration_dataset: images to score and reconstruct on at every step (anything `SNPPruner.prune` accepts).
        num_steps: k >= 1 pruning steps; k = 1 is one-shot pruning at the start of training.
        prune_at: the epochs (floats allowed) at which the k steps run, e.g. [0, 1, 2]; by default the fractions
            0, 1/k, ..., (k-1)/k of training. A step runs at the first optimizer step at or after its epoch.
        image_processor: preprocesses raw calibration images (default: the model's, or one derived from its config).
        split: the calibration split when `calibration_dataset` is a `DatasetDict` or a name.

    After each step, `history` lists every step so far (epoch, global step, target and reached MACs, allocation,
    seconds), and the model carries `PruningInfo`: the final config, the plan composed over all steps (indices of
    the model as training started), and a report whose "gradual" entry lists every step. Not supported: resuming
    from a checkpoint written after a pruning step, and multi-process (DDP/FSDP/DeepSpeed) training.
    """

    def __init__(
        self,
        config: SNPConfig,
        calibration_dataset=None,
        num_steps: int = 3,
        prune_at: list[float] | None = None,
        image_processor=None,
        split: str = "train",
        show_progress: bool = False,
    ):
        if not isinstance(config, SNPConfig):
            raise ValueError(f"`config` must be an SNPConfig, got {type(config).__name__}.")
        if not config.has_target or config.target_latency is not None:
            raise ValueError(
                "Gradual pruning interpolates a MACs target: set `target_macs_ratio` (fraction of the MACs kept) or "
                "`target_macs` (absolute MACs per image) in the SNPConfig (`target_latency` is not supported here)."
            )
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"`num_steps` must be an int >= 1 (1 = one-shot at the start), got {num_steps!r}.")
        if calibration_dataset is None and config.needs_calibration:
            raise ValueError(
                "Gradual pruning re-scores and reconstructs the model at every step on calibration images: pass "
                "`calibration_dataset` (a datasets.Dataset, a dataset name or a folder of images), or use "
                "criterion='magnitude' and reconstruct='none'."
            )
        if prune_at is not None:
            prune_at = [float(e) for e in prune_at]
            if len(prune_at) != num_steps:
                raise ValueError(f"`prune_at` lists {len(prune_at)} epochs for num_steps={num_steps}; give one each.")
            if any(e < 0 for e in prune_at) or prune_at != sorted(prune_at):
                raise ValueError(f"`prune_at` must be non-decreasing epochs >= 0, got {prune_at}.")
        self.config = config
        self.calibration_dataset = calibration_dataset
        self.num_steps = num_steps
        self.prune_at = prune_at
        self.image_processor = image_processor
        self.split = split
        self.show_progress = show_progress
        self.history: list[dict] = []
        self._trigger_steps: list[int] | None = None
        self._original = None  # (macs, params, hidden_size, layer dims, base model, results) when training starts
        self._plan: PruningPlan | None = None
        self._targets: list[float] = []

    # ---- schedule -------------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return len(self.history) >= self.num_steps

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        if getattr(args, "world_size", 1) > 1:
            raise ValueError(
                "GradualPruningCallback swaps the model's parameters during training, which DDP/FSDP/DeepSpeed "
                "wrappers do not follow; train on one process, or prune once and fine-tune (optimum_snp.finetune)."
            )
        if self.history:
            raise ValueError("This GradualPruningCallback already pruned a model; make a new one for another run.")
        adapter = get_adapter(model)
        size = model_size_of(model)
        info = get_pruning_info(model)
        self._original = {
            "macs": size.macs,
            "params": size.params,
            "hidden_size": adapter.hidden_size,
            "layers": [d.to_dict() for d in adapter.layer_dims()],
            "base_model": (info.base_model if info is not None else None)
            or getattr(model, "name_or_path", None)
            or None,
            "results": dict(info.results) if info is not None else {},
        }
        self._plan = PruningPlan.identity(adapter.hidden_size, adapter.layer_dims())
        final = (
            self.config.target_macs
            if self.config.target_macs is not None
            else self.config.target_macs_ratio * size.macs
        )
        self._targets = step_targets(size.macs, final, self.num_steps)

        max_steps = state.max_steps
        if self.prune_at is None:
            self._trigger_steps = [j * max_steps // self.num_steps for j in range(self.num_steps)]
        else:
            per_epoch = max_steps
            if train_dataloader is not None and hasattr(train_dataloader, "__len__") and len(train_dataloader) > 0:
                per_epoch = -(-len(train_dataloader) // args.gradient_accumulation_steps)
            self._trigger_steps = [round(e * per_epoch) for e in self.prune_at]
        if self._trigger_steps[-1] >= max_steps:
            raise ValueError(
                f"Pruning steps at epochs {self.prune_at} run at optimizer steps {self._trigger_steps}, but training "
                f"has only {max_steps} optimizer steps; prune earlier or train longer."
            )
        if not type(model).__name__.startswith("SNP"):
            logger.info(
                "Gradual pruning will change the class of %s to its SNP class at the first step; convert it "
                "beforehand with optimum_snp.gradual.to_snp_model to keep the class fixed.",
                type(model).__name__,
            )

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        while not self.done and state.global_step >= self._trigger_steps[len(self.history)]:
            self.prune_step(model, optimizer, args=args, state=state)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._original is not None and not self.done:
            warnings.warn(
                f"Training ended after {len(self.history)} of {self.num_steps} pruning steps; the model has "
                f"{model_size_of(model).macs} MACs, not the target {self._targets[-1]:.0f}.",
                UserWarning,
                stacklevel=2,
            )

    # ---- one step -------------------------------------------------------------------------------------------
    def prune_step(self, model: nn.Module, optimizer=None, args=None, state=None) -> dict:
        """Runs the next pruning step on `model` in place and re-targets `optimizer` (when given)."""
        if self._original is None:
            raise ValueError("Call on_train_begin first (the Trainer does), so the original MACs are known.")
        j = len(self.history)
        start = time.perf_counter()
        before = model_size_of(model)
        target = self._targets[j]
        record = {
            "step": j + 1,
            "epoch": round(float(state.epoch or 0.0), 4) if state is not None else None,
            "global_step": state.global_step if state is not None else None,
            "target_macs": target,
            "macs_before": before.macs,
        }
        if before.macs <= target:  # an earlier step already got there
            record.update(macs_after=before.macs, params_after=before.params, allocation="skipped (already at target)")
        else:
            step_config = dataclasses.replace(self.config, target_macs=target, target_macs_ratio=None)
            was_training = model.training
            checkpointing = _checkpointing_on(model)
            old_groups, old_ids = _group_of_names(optimizer, model) if optimizer is not None else ({}, set())
            model.eval()
            pruner, pruned = self._prune(model, step_config)
            self.image_processor = pruner.image_processor
            trainable = {n: p.requires_grad for n, p in model.named_parameters()}
            for name, param in pruned.named_parameters():
                param.requires_grad_(trainable.get(name, True))
            _swap_in_place(model, pruned)
            model.train(was_training)
            if checkpointing:  # the new layers come without it
                _enable_checkpointing(model, args)
            if optimizer is not None:
                _rebuild_optimizer(optimizer, model, old_groups, old_ids, getattr(args, "weight_decay", 0.0) or 0.0)
            self._plan = compose_plans(self._plan, pruner.plan)
            after = model_size_of(model)
            record.update(
                macs_after=after.macs,
                params_after=after.params,
                allocation=pruner.report["allocation"]["chosen"],
                report=pruner.report,
            )
        record["ratio_of_original"] = record["macs_after"] / self._original["macs"]
        record["seconds"] = round(time.perf_counter() - start, 3)
        self.history.append(record)
        logger.info(
            "Gradual pruning step %d/%d: %d -> %d MACs (target %.0f)",
            j + 1,
            self.num_steps,
            record["macs_before"],
            record["macs_after"],
            target,
        )
        self._attach_info(model)
        return record

    def _prune(self, model: nn.Module, step_config: SNPConfig) -> tuple[SNPPruner, nn.Module]:
        """`SNPPruner(model).prune(step_config)`, on the device the model is on."""
        pruner = SNPPruner(model, image_processor=self.image_processor)
        pruned = pruner.prune(
            step_config,
            calibration_dataset=self.calibration_dataset,
            split=self.split,
            show_progress=self.show_progress,
        )
        return pruner, pruned

    def _attach_info(self, model: nn.Module) -> None:
        original = self._original
        size = model_size_of(model)
        adapter = get_adapter(model)
        last = next((r["report"] for r in reversed(self.history) if "report" in r), None) or {}
        steps = [{k: v for k, v in r.items() if k != "report"} for r in self.history]
        report = {
            "optimum_snp_version": __version__,
            "source": original["base_model"],
            "architecture": type(model).__name__,
            "criteria": last.get("criteria", self.config.criterion_per_group(adapter.default_criteria)),
            "num_calibration_samples": last.get("num_calibration_samples", 0),
            "params": {"before": original["params"], "after": size.params, "ratio": size.params / original["params"]},
            "macs": {"before": original["macs"], "after": size.macs, "ratio": size.macs / original["macs"]},
            "target_macs": self._targets[-1],
            "hidden_size": {"before": original["hidden_size"], "after": adapter.hidden_size},
            "layers": [
                {"layer": i, "before": b, "after": a.to_dict()}
                for i, (b, a) in enumerate(zip(original["layers"], adapter.layer_dims(), strict=True))
            ],
            "seconds": {"pruning": round(sum(r["seconds"] for r in self.history), 3)},
            "gradual": {
                "num_steps": self.num_steps,
                "steps_done": len(self.history),
                "prune_at_optimizer_steps": list(self._trigger_steps or []),
                "schedule": "geometric",
                "steps": steps,
            },
        }
        if "reconstruction" in last:
            report["reconstruction"] = last["reconstruction"]
        plan = self._plan
        plan.metadata.update(criteria=report["criteria"], snp_config=self.config.to_dict(), gradual_steps=len(steps))
        previous = get_pruning_info(model)
        results = dict(previous.results) if previous is not None and previous.results else dict(original["results"])
        attach_pruning_info(
            model,
            PruningInfo(
                snp_config=self.config,
                report=report,
                plan=plan,
                image_processor=self.image_processor,
                base_model=original["base_model"],
                results=results,
            ),
        )


# ---- one call ----------------------------------------------------------------------------------------------------
def gradual_prune(
    model: nn.Module,
    config: SNPConfig,
    train_dataset,
    calibration_dataset,
    image_processor,
    epochs: float = 5,
    num_steps: int = 3,
    prune_at: list[float] | None = None,
    teacher: nn.Module | None = None,
    learning_rate: float = 1e-3,
    batch_size: int = 32,
    distillation_type: str = "soft",
    split: str = "train",
    image_column: str | None = None,
    label_column: str = "label",
    seed: int = 0,
    output_dir: str | None = None,
    show_progress: bool = True,
    callbacks: list | None = None,
) -> nn.Module:
    """Prunes `model` to `config`'s MACs target in `num_steps` steps during `epochs` of distillation fine-tuning
    (same training recipe as `finetune`), and returns the pruned, fine-tuned SNP model; `model` itself is left
    unchanged and is the teacher unless `teacher` is given (`distillation_type='none'`: no teacher).

    The returned model carries its pruning info (save_pretrained / push_to_hub write the config, the plan composed
    over all steps, the report with every step and the card); its report's "gradual" entry also holds the training
    loss and seconds. `callbacks` are extra Trainer callbacks (run after the pruning callback)."""
    callback = GradualPruningCallback(
        config,
        calibration_dataset=calibration_dataset,
        num_steps=num_steps,
        prune_at=prune_at,
        image_processor=image_processor,
        split=split,
        show_progress=show_progress,
    )
    data = training_view(
        load_calibration_dataset(train_dataset, split=split), image_processor, image_column, label_column
    )
    student = to_snp_model(model)
    student.train()
    if distillation_type == "none":
        teacher = None
    elif teacher is None:
        teacher = model
    # the trainer freezes the teacher and moves it to the training device: the caller gets it back as it was
    frozen = {p: p.requires_grad for p in teacher.parameters()} if teacher is not None else {}
    was_training = teacher.training if teacher is not None else False
    teacher_device = next(iter(frozen)).device if frozen else None
    with tempfile.TemporaryDirectory() as scratch:
        args = training_arguments(
            output_dir or scratch,
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=batch_size,
            distillation_type=distillation_type,
            seed=seed,
            show_progress=show_progress,
        )
        trainer = SNPDistillationTrainer(
            model=student,
            args=args,
            teacher=teacher,
            train_dataset=data,
            data_collator=collate,
            callbacks=[callback, *(callbacks or [])],
        )
        start = time.perf_counter()
        try:
            result = trainer.train()
        finally:
            for param, flag in frozen.items():
                param.requires_grad_(flag)
            if teacher is not None:
                teacher.train(was_training)
                if teacher_device is not None:
                    teacher.to(teacher_device)
    student.eval()
    info = get_pruning_info(student)
    if info is not None and info.report is not None:
        info.report["gradual"].update(
            epochs=epochs,
            train_seconds=round(time.perf_counter() - start, 1),
            train_loss=result.training_loss,
            distillation_type=args.distillation_type,
        )
    return student


__all__ = ["GradualPruningCallback", "compose_plans", "gradual_prune", "step_targets", "to_snp_model"]
