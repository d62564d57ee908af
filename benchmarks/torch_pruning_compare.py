"""Torch-Pruning vs SNP, side by side, at equal MACs (by default 50% and 30% of the original MACs kept).

    python benchmarks/torch_pruning_compare.py [--epochs 5] [--keep 0.5 0.3] [--skip-digits] [--skip-deit]

Needs the benchmark-only dependency `torch-pruning==1.6.1` (not a dependency of optimum-snp).

1. The embedded digits ViT (4 layers, hidden 96, 4 heads of 24, MLP 384, 32x32 images): MACs, params, top-1 on the
   digits test split before and after the same distillation fine-tuning (`optimum_snp.finetune.finetune`, the
   unpruned model as teacher), latency ratio original/pruned at batch 16, prune time.
2. DeiT-Small built from its config with random weights (224x224): MACs, params, latency ratios at batch 1 and 16,
   prune time. No accuracy there: the weights are random.

Rows. Torch-Pruning (TP) uses `MetaPruner` with `MagnitudeImportance(p=2)` and local (uniform) ratios, in three
variants: "channels" (TP's default for ViTs: one ratio r on every group -- residual width, per-head query/key/value
dims, MLP units), "heads" (whole heads, ceil(r * heads) per layer, instead of head dims; residual width and MLP by r)
and "width kept" (channels, with the residual width kept as SNP's defaults keep it: the patch-embedding convolution
is in `ignored_layers`). SNP rows: uniform ratios `SNPConfig(qk_ratio=r, v_ratio=r, mlp_ratio=r)` and automatic
allocation `SNPConfig(target_macs_ratio=keep)` (also with `round_to=1`: exact dims, no rounding to multiples of 8),
all with SNP's shipped defaults otherwise (criteria, least-squares refit, validated allocation) and 64 calibration
images.
TP has no MACs target: r is chosen by searching TP's own rounding rule (int(n * (1 - r)) kept per group,
ceil(r * heads) heads removed) for the structure closest in MACs to the target, then the model is pruned once for
real and its structure checked against the prediction; the same is done for SNP's uniform r. "prune (s)" is that one
real pruning (for TP: dependency-graph tracing + importance + slicing; for SNP: calibration + scoring + slicing + refit + the held-out choice).

MACs and params are counted for every row by one counter: `optimum_snp.accounting.model_size` fed with the
dimensions read from the module shapes (a Torch-Pruning model keeps its unpruned config, so the config-based
`model_size_of` would report the original size). The script checks, for every model, that this count equals
`torch.utils.flop_counter` (FLOPs / 2) run with eager attention (its CPU SDPA kernel is not counted by it).

Latency: `benchmarks/latency.py`'s `interleaved_latency`, every model of a section measured in the same interleaved
rounds under `torch.inference_mode`; the ratio is original median / pruned median (> 1: the pruned model is faster).

What had to be done to make Torch-Pruning 1.6.1 run on transformers 5.x ViT/DeiT (also printed as "notes"):

* Its Hugging Face ViT example imports `ViTSelfAttention`, which no longer exists: attention is now `ViTAttention`
  / `DeiTAttention` with separate `q_proj`, `k_proj`, `v_proj`, `o_proj` Linears and the attributes
  `num_attention_heads`, `head_dim`, `scaling` (no `attention_head_size` / `all_head_size`). The `num_heads` dict
  given to `MetaPruner` is keyed by the three q/k/v Linears.
* After `pruner.step()` every attention module's `num_attention_heads` (from `pruner.num_heads[q_proj]`) and
  `head_dim` (`q_proj.out_features // num_attention_heads`) must be set by hand. The forward reshapes with
  `view(..., -1, head_dim)`: when head dims were pruned and `head_dim` is stale it fails with a RuntimeError, and
  when whole heads were pruned as well the shapes can still fit, so it runs and silently splits the channels into
  the wrong heads (48 channels read as 2 heads of 24 instead of 3 of 16). `scaling` is left at the original
  head_dim ** -0.5 (recomputing it would change the function the weights compute; SNP keeps it too).
* The model's config is not updated (hidden size, heads, MLP size stay the original ones): size counters that read
  the config report the unpruned size, and `save_pretrained` / `from_pretrained` of the pruned model fails with
  size mismatches. Here sizes are counted from module shapes.
* `MetaPruner`'s `in_channel_groups` / `out_channel_groups` arguments default to one shared `dict()` which every
  pruner fills with the modules of its model (the `num_heads` entries); pass fresh `{}` each time, otherwise each
  pruned model stays referenced (a leak that matters when many pruners are built).
* `unwrapped_parameters` must be a list of (parameter, dim) pairs; a dict, as its type hint says, fails with
  "ValueError: not enough values to unpack". Without it TP guesses the last dim of the class / distillation tokens
  and position embeddings (correct here) and warns.
* Not needed: an `output_transform` (TP traces through the `ImageClassifierOutput`), switching from SDPA to eager
  attention (the SDPA call is traced and q, k, v, o are coupled correctly).

Limitations of Torch-Pruning found here (not worked around): q, k, v and o fall into one dependency group, so query/key
and value always keep the same dims and the same indices (SNP prunes them separately); head dims are pruned at the
same positions in every head (importances averaged over heads); with `pruning_ratio=0` head pruning removes nothing
(heads are only removed inside a group that also loses channels); `torch_pruning.__version__` says "1.6.0" for the
1.6.1 wheel.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.metadata
import io
import logging
import math
import statistics
import time
import warnings
from dataclasses import dataclass, field

import torch
from latency import interleaved_latency, machine_line
from torch import nn


NOTES = [
    "TP's HF ViT example imports `ViTSelfAttention`, gone in transformers 5 (now `ViTAttention`/`DeiTAttention` with "
    "q_proj/k_proj/v_proj/o_proj); `num_heads` is given as {q_proj/k_proj/v_proj Linear: heads}.",
    "After `pruner.step()`, each attention's `num_attention_heads` (= `pruner.num_heads[q_proj]`) and `head_dim` "
    "(= q_proj.out_features // heads) are set by hand; without it the forward fails (head dims pruned) or, with "
    "heads also pruned, runs and silently mixes heads. `scaling` is kept at the original head_dim**-0.5.",
    "TP leaves the config unpruned (save/reload fails with size mismatches; config-based counters report the "
    "original size): all sizes here come from module shapes, checked equal to torch.utils.flop_counter (eager).",
    "Fresh `in_channel_groups={}` / `out_channel_groups={}` are passed to every MetaPruner: their shared mutable "
    "defaults would keep every pruned model alive.",
    "`unwrapped_parameters` is passed as a list of (param, dim) pairs (the dict of its type hint fails).",
    "TP limitations: q/k/v/o form one group, so query/key and value keep the same dims and indices; head dims are "
    "cut at the same positions in every head; with pruning_ratio=0 head pruning removes nothing; heads are removed "
    "ceil(r*H) per layer.",
    "TP has no MACs target: its ratio r is found by searching TP's rounding rule (int(n*(1-r)) kept per group) for "
    "the structure closest to the target; 'prune (s)' is the single real pruning afterwards (SNP likewise).",
]


@dataclass(frozen=True)
class TPVariant:
    key: str
    label: str
    heads: bool  # whole heads instead of head dims
    keep_width: bool  # residual (hidden) width not pruned


TP_VARIANTS = {
    "channels": TPVariant("channels", "TP L2, channels", heads=False, keep_width=False),
    "heads": TPVariant("heads", "TP L2, heads", heads=True, keep_width=False),
    "width-kept": TPVariant("width-kept", "TP L2, channels, width kept", heads=False, keep_width=True),
}


@dataclass
class Row:
    method: str
    keep: float | None
    model: nn.Module
    prune_s: float | None = None
    ratio: float | None = None  # TP pruning_ratio or SNP uniform ratio
    note: str = ""
    results: dict = field(default_factory=dict)


# ---- sizes ------------------------------------------------------------------------------------------------------
def shape_dims(model):
    """(hidden size, [LayerDims]) read from the module shapes (valid for stock, TP-pruned and SNP models)."""
    from optimum_snp import LayerDims, get_adapter

    base = get_adapter(model).base_model()
    hidden = base.embeddings.patch_embeddings.projection.out_channels
    dims = []
    for layer in base.layers:
        att = layer.attention
        heads = att.num_attention_heads
        dims.append(
            LayerDims(
                heads, att.q_proj.out_features // heads, att.v_proj.out_features // heads, layer.mlp.fc1.out_features
            )
        )
    return hidden, dims


def size_of(config, architecture, hidden, dims):
    from optimum_snp import model_size

    return model_size(config, architecture, hidden_size=hidden, layer_dims=dims)


def measured_size(model):
    from optimum_snp.accounting import architecture_of

    hidden, dims = shape_dims(model)
    return size_of(model.config, architecture_of(model), hidden, dims)


def flop_counter_macs(model, example: torch.Tensor) -> float:
    """MACs of one forward by torch.utils.flop_counter (FLOPs / 2), with eager attention so Q K^T and A V count."""
    from torch.utils.flop_counter import FlopCounterMode

    old = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model(pixel_values=example)
    finally:
        model.config._attn_implementation = old
    return counter.get_total_flops() / 2 / example.shape[0]


def structure(model) -> str:
    hidden, dims = shape_dims(model)

    def compact(values):
        return str(values[0]) if len(set(values)) == 1 else "/".join(map(str, values))

    return (
        f"width {hidden}; heads {compact([d.num_heads for d in dims])}; qk/head {compact([d.qk_head_dim for d in dims])}; "
        f"v/head {compact([d.v_head_dim for d in dims])}; mlp {compact([d.intermediate_size for d in dims])}"
    )


# ---- Torch-Pruning ----------------------------------------------------------------------------------------------
def tp_predict(hidden: int, dims, ratio: float, variant: TPVariant):
    """The (hidden, dims) Torch-Pruning's local MetaPruner produces with `pruning_ratio=ratio` (its rounding rule)."""
    from optimum_snp import LayerDims

    def kept(n: int) -> int:
        return int(n * (1 - ratio))  # base_pruner: n_pruned = n - int(initial * (1 - ratio))

    new_hidden = hidden if variant.keep_width else kept(hidden)
    out = []
    for d in dims:
        removes_dims = d.qk_head_dim - kept(d.qk_head_dim) > 0  # heads only go inside a group that loses channels
        if variant.heads:
            heads = d.num_heads - (math.ceil(ratio * d.num_heads) if removes_dims else 0)
            head_dim = d.qk_head_dim
        else:
            heads, head_dim = d.num_heads, kept(d.qk_head_dim)
        out.append(LayerDims(heads, head_dim, head_dim, kept(d.intermediate_size)))
    if new_hidden < 1 or any(min(d.num_heads, d.qk_head_dim, d.intermediate_size) < 1 for d in out):
        return None
    return new_hidden, out


def tp_prune(model: nn.Module, example: torch.Tensor, ratio: float, variant: TPVariant) -> nn.Module:
    """Prunes `model` in place with Torch-Pruning's MetaPruner (L2 magnitude) and fixes the attention modules."""
    import torch_pruning as tp

    from optimum_snp import get_adapter

    adapter = get_adapter(model)
    base = adapter.base_model()
    attentions = [layer.attention for layer in base.layers]
    num_heads = {proj: att.num_attention_heads for att in attentions for proj in (att.q_proj, att.k_proj, att.v_proj)}
    embeddings = base.embeddings
    unwrapped = [
        (param, 2)  # (1, tokens, hidden): the hidden channel is the last axis
        for name in ("cls_token", "distillation_token", "mask_token", "position_embeddings")
        if isinstance(param := getattr(embeddings, name, None), nn.Parameter)
    ]
    ignored = list(adapter.classifier_modules())
    if variant.keep_width:
        ignored.append(embeddings.patch_embeddings.projection)  # makes the residual-width group unprunable
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=2),
        global_pruning=False,
        pruning_ratio=ratio,
        num_heads=num_heads,
        prune_num_heads=variant.heads,
        prune_head_dims=not variant.heads,
        head_pruning_ratio=ratio if variant.heads else 0.0,
        ignored_layers=ignored,
        unwrapped_parameters=unwrapped,
        in_channel_groups={},  # the defaults are shared mutable dicts
        out_channel_groups={},
    )
    pruner.step()
    for att in attentions:  # the forward reads these; Torch-Pruning does not know them
        att.num_attention_heads = pruner.num_heads[att.q_proj]
        att.head_dim = att.q_proj.out_features // att.num_attention_heads
    return model


# ---- ratio search -----------------------------------------------------------------------------------------------
def closest_ratio(predict, size_fn, target: float, high: float = 0.95, step: float = 0.0005):
    """The ratio in [0, high] whose predicted structure has MACs closest to `target` (middle of its ratio run)."""
    candidates = []
    for i in range(int(round(high / step)) + 1):
        ratio = round(i * step, 6)
        predicted = predict(ratio)
        if predicted is not None:
            candidates.append((ratio, size_fn(*predicted).macs, predicted))
    best = min(abs(macs - target) for _, macs, _ in candidates)
    best_structure = next(p for _, macs, p in candidates if abs(macs - target) == best)
    ratios = [r for r, _, p in candidates if p == best_structure]
    return statistics.median_low(ratios), best_structure


def snp_uniform_predict(hidden: int, dims, ratio: float):
    """The structure `SNPConfig(qk_ratio=r, v_ratio=r, mlp_ratio=r)` prunes to, with its default rounding."""
    from optimum_snp import SNPConfig
    from optimum_snp.allocation import round_dims, round_kept

    config = SNPConfig(qk_ratio=ratio, v_ratio=ratio, mlp_ratio=ratio)
    try:
        kept_hidden, kept = config.pruning_ratios(len(dims)).kept_dims(hidden, dims)
    except ValueError:
        return None
    return round_kept(kept_hidden, hidden, config.round_to), round_dims(kept, dims, config.round_to)


# ---- building the rows ------------------------------------------------------------------------------------------
def prune_rows(original, pruner, example, keeps, variants, calibration, num_calibration) -> list[Row]:
    from optimum_snp import SNPConfig
    from optimum_snp.accounting import architecture_of

    hidden, dims = shape_dims(original)
    arch = architecture_of(original)

    def size_fn(h, d):
        return size_of(original.config, arch, h, d)

    base_macs = size_fn(hidden, dims).macs
    rows = []
    for keep in keeps:
        target = keep * base_macs
        for variant in variants:
            ratio, predicted = closest_ratio(lambda r, v=variant: tp_predict(hidden, dims, r, v), size_fn, target)
            student = copy.deepcopy(original)
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tp_prune(student, example, ratio, variant)
            prune_s = time.perf_counter() - start
            actual = shape_dims(student)
            note = "" if actual == tuple(predicted) else " (structure differs from the predicted one)"
            rows.append(Row(variant.label, keep, student.eval(), prune_s, ratio, note))
        ratio, predicted = closest_ratio(lambda r: snp_uniform_predict(hidden, dims, r), size_fn, target)
        configs = [
            (
                "SNP uniform",
                SNPConfig(qk_ratio=ratio, v_ratio=ratio, mlp_ratio=ratio, num_calibration_samples=num_calibration),
                ratio,
            ),
            ("SNP auto", SNPConfig(target_macs_ratio=keep, num_calibration_samples=num_calibration), None),
            (
                "SNP auto, round_to=1",
                SNPConfig(target_macs_ratio=keep, round_to=1, num_calibration_samples=num_calibration),
                None,
            ),
        ]
        for label, config, r in configs:
            start = time.perf_counter()
            pruned = pruner.prune(config, calibration_dataset=calibration, split="train", show_progress=False)
            prune_s = time.perf_counter() - start
            note = ""
            if r is not None and shape_dims(pruned) != tuple(predicted):
                note = " (structure differs from the predicted one)"
            rows.append(Row(label, keep, pruned.eval(), prune_s, r, note))
    return rows


def check_counter(rows: list[Row], example: torch.Tensor) -> str:
    worst = 0.0
    for row in rows:
        counted = measured_size(row.model).macs
        reference = flop_counter_macs(row.model, example)
        worst = max(worst, abs(counted - reference) / reference)
    verdict = "equal" if worst < 1e-9 else f"max relative difference {worst:.2e}"
    return f"MACs counter vs torch.utils.flop_counter (eager attention), all {len(rows)} models: {verdict}"


def latency_ratios(rows: list[Row], pixel_values: torch.Tensor, runs: int, warmup: int, key: str) -> None:
    def forward(model):
        def run():
            with torch.inference_mode():
                model(pixel_values=pixel_values)

        return run

    fns = {str(i): forward(row.model) for i, row in enumerate(rows)}
    timings = interleaved_latency(fns, runs=runs, warmup=warmup)
    reference = timings["0"]["median"]  # rows[0] is the original
    for i, row in enumerate(rows):
        row.results[key] = reference / timings[str(i)]["median"]
        row.results[key + "_ms"] = 1e3 * timings[str(i)]["median"]


def fmt_ratio(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def kept_columns(row: Row, base, target_macs):
    size = measured_size(row.model)
    kept = size.macs / base.macs
    deviation = "" if row.keep is None else f"{100 * (size.macs / target_macs(row.keep) - 1):+.1f}%"
    return size, kept, deviation


# ---- sections ---------------------------------------------------------------------------------------------------
def digits_section(args, variants) -> None:
    from transformers import AutoModelForImageClassification

    from optimum_snp import SNPPruner
    from optimum_snp.embedded import digits_dataset, digits_image_processor, load_embedded_model
    from optimum_snp.evaluation import evaluate_accuracy
    from optimum_snp.finetune import finetune

    digits = digits_dataset()
    path = load_embedded_model(show_progress=False)
    processor = digits_image_processor()
    original = AutoModelForImageClassification.from_pretrained(path).eval()
    pruner = SNPPruner.from_pretrained(copy.deepcopy(original), image_processor=processor)
    example = torch.randn(1, 3, original.config.image_size, original.config.image_size)
    pruned_rows = prune_rows(original, pruner, example, args.keep, variants, digits["train"], args.calibration_images)
    rows = [Row("original", None, original), *pruned_rows]
    counter_line = check_counter(rows, example)

    def top1(model):
        return evaluate_accuracy(model, digits, processor, split="test", show_progress=False)["top1"]

    for row in rows:
        row.results["zero_shot"] = top1(row.model)
    if args.epochs > 0:
        for row in pruned_rows:
            teacher = copy.deepcopy(original)
            row.model.requires_grad_(True)
            with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its final metrics dict
                result = finetune(
                    row.model,
                    teacher,
                    digits["train"],
                    processor,
                    epochs=args.epochs,
                    learning_rate=args.learning_rate,
                    show_progress=False,
                )
            row.model.eval()
            row.results["finetuned"] = top1(row.model)
            row.results["finetune_s"] = result["seconds"]
            print(
                f"  fine-tuned {row.method} @ {row.keep:.0%}: {row.results['finetuned']:.2%} ({result['seconds']} s)",
                flush=True,
            )

    test_images = [image.convert("RGB") for image in digits["test"]["image"][: args.batch_size]]
    pixel_values = processor(test_images, return_tensors="pt")["pixel_values"]
    latency_ratios(rows, pixel_values, args.digits_runs, args.warmup, "speedup")

    base = measured_size(original)
    print(
        f"\n## Embedded digits ViT ({path})\n\n"
        f"4 layers, hidden 96, 4 heads x 24, MLP 384, 32x32 images; test split {len(digits['test'])} images; "
        f"SNP calibrated on {args.calibration_images} train images. Fine-tuning: {args.epochs:g} epochs, lr "
        f"{args.learning_rate}, batch 32, soft distillation from the unpruned model (optimum_snp.finetune). "
        f"Speed-up: original/pruned median latency, batch {args.batch_size}, {args.digits_runs} interleaved runs "
        f"(original {rows[0].results['speedup_ms']:.2f} ms).\n"
    )
    ft_header = f"top-1 after FT ({args.epochs:g} ep)" if args.epochs > 0 else "top-1 after FT (skipped)"
    print(
        f"| method | target | MACs (M) | MACs kept | vs target | params (M) | top-1 zero-shot | {ft_header} | "
        f"speed-up b{args.batch_size} | prune (s) | ratio r |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        size, kept, deviation = kept_columns(row, base, lambda k: k * base.macs)
        finetuned = row.results.get("finetuned")
        print(
            f"| {row.method}{row.note} | {'-' if row.keep is None else f'{row.keep:.0%}'} | {size.macs / 1e6:.2f} | "
            f"{kept:.1%} | {deviation or '-'} | {size.params / 1e6:.3f} | {row.results['zero_shot']:.2%} | "
            f"{'-' if finetuned is None else f'{finetuned:.2%}'} | {row.results['speedup']:.2f} | "
            f"{'-' if row.prune_s is None else f'{row.prune_s:.2f}'} | {fmt_ratio(row.ratio)} |"
        )
    print(f"\n{counter_line}. Test split: 1 image = {1 / len(digits['test']):.2%}.\n\nStructures:\n")
    for row in rows:
        print(f"- {row.method}{'' if row.keep is None else f' @ {row.keep:.0%}'}: {structure(row.model)}")


def deit_section(args, variants) -> None:
    from transformers import DeiTForImageClassification

    from optimum_snp import SNPPruner
    from optimum_snp.embedded import digits_dataset
    from optimum_snp.paper import deit_config

    torch.manual_seed(args.seed)
    original = DeiTForImageClassification(deit_config("small")).eval()
    pruner = SNPPruner.from_pretrained(copy.deepcopy(original))
    calibration = digits_dataset()["train"]
    size = original.config.image_size
    example = torch.randn(1, 3, size, size)
    pruned_rows = prune_rows(original, pruner, example, args.keep, variants, calibration, args.calibration_images)
    rows = [Row("original", None, original), *pruned_rows]
    counter_line = check_counter(rows, example)
    generator = torch.Generator().manual_seed(args.seed)
    latency_ratios(rows, torch.randn(1, 3, size, size, generator=generator), args.runs, args.warmup, "b1")
    latency_ratios(rows, torch.randn(16, 3, size, size, generator=generator), args.runs, args.warmup, "b16")

    base = measured_size(original)
    print(
        "\n## DeiT-Small (random weights, 224x224, 1000 classes)\n\n"
        "No accuracy: the weights are random, so top-1 would mean nothing; only sizes, latency and prune time. SNP "
        f"calibrated on {args.calibration_images} scikit-learn digits upscaled to 224x224 by the image processor SNP "
        "derives from the config; Torch-Pruning traced with one 1x3x224x224 input. Speed-up: original/pruned median "
        f"latency, {args.runs} interleaved runs (original {rows[0].results['b1_ms']:.1f} ms at batch 1, "
        f"{rows[0].results['b16_ms']:.0f} ms at batch 16).\n"
    )
    print(
        "| method | target | GMACs | MACs kept | vs target | params (M) | speed-up b1 | speed-up b16 | prune (s) "
        "| ratio r |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        size_, kept, deviation = kept_columns(row, base, lambda k: k * base.macs)
        print(
            f"| {row.method}{row.note} | {'-' if row.keep is None else f'{row.keep:.0%}'} | {size_.macs / 1e9:.3f} | "
            f"{kept:.1%} | {deviation or '-'} | {size_.params / 1e6:.2f} | {row.results['b1']:.2f} | "
            f"{row.results['b16']:.2f} | {'-' if row.prune_s is None else f'{row.prune_s:.2f}'} | "
            f"{fmt_ratio(row.ratio)} |"
        )
    print(f"\n{counter_line}.\n\nStructures:\n")
    for row in rows:
        print(f"- {row.method}{'' if row.keep is None else f' @ {row.keep:.0%}'}: {structure(row.model)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=float, nargs="+", default=[0.5, 0.3], help="fractions of the MACs kept")
    parser.add_argument("--epochs", type=float, default=5, help="fine-tuning epochs on digits (0: no fine-tuning)")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--tp-variants", nargs="+", default=list(TP_VARIANTS), choices=list(TP_VARIANTS))
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="digits latency batch size")
    parser.add_argument("--runs", type=int, default=30, help="interleaved timing runs for DeiT-S (>= 30)")
    parser.add_argument("--digits-runs", type=int, default=100, help="interleaved timing runs for the digits ViT")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--skip-deit", action="store_true")
    args = parser.parse_args(argv)
    if any(not 0.0 < k < 1.0 for k in args.keep):
        parser.error("--keep values must lie in (0, 1)")

    import transformers

    import optimum_snp

    logging.getLogger("transformers").setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    variants = [TP_VARIANTS[key] for key in args.tp_variants]
    start = time.perf_counter()
    print("# Torch-Pruning vs SNP at equal MACs\n")
    print(f"machine: {machine_line()}")
    print(
        f"versions: optimum-snp {optimum_snp.__version__}, torch-pruning {importlib.metadata.version('torch-pruning')}, "
        f"transformers {transformers.__version__}; targets: {', '.join(f'{k:.0%}' for k in args.keep)} of the "
        "original MACs kept\n"
    )
    print(
        "Rows: " + "; ".join(f"{v.label} (--tp-variants {v.key})" for v in variants) + "; SNP uniform = "
        "SNPConfig(qk_ratio=r, v_ratio=r, mlp_ratio=r); SNP auto = SNPConfig(target_macs_ratio=keep); every SNP "
        "row with the shipped defaults otherwise (criteria, least-squares refit, validated allocation, kept dims "
        "rounded to multiples of 8 where a group has 64+ units); round_to=1: no rounding. "
        "'ratio r' = TP's pruning_ratio (and head ratio for 'heads') or SNP's uniform ratio.",
        flush=True,
    )
    if not args.skip_digits:
        digits_section(args, variants)
    if not args.skip_deit:
        deit_section(args, variants)
    print("\n## Notes\n")
    for note in NOTES:
        print(f"- {note}")
    print(f"\nTotal runtime: {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
