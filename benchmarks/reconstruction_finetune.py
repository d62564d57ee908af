"""Does reconstruction still help after fine-tuning? The embedded default (digits ViT), pruned with the same plan and
then either reconstructed (least squares, the default) or not, fine-tuned for the same epochs (soft distillation,
the main job's recipe, `optimum_snp.finetune.finetune`), top-1 on the digits test split.

    python benchmarks/reconstruction_finetune.py [--epochs 5] [--keep 0.5 0.3] [--seeds 0 1]
        [--models embedded | BENCH NAMES | tune] [--criterion snp | v-mlp-contribution]
        [--learning-rates 1e-4 1e-3] [--starts refit unrefit]

`--models`: 'embedded' (the default: the embedded digits ViT, its test split, what the issue asks about) or bench
models of `bench_models.py` ('tune' = all tune models), each fine-tuned on its train split and scored on its
validation split (tune models) or test split (report models).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import time

from optimum_snp import SNPConfig, SNPPruner, apply_plan
from optimum_snp.embedded import digits_dataset, load_embedded_model
from optimum_snp.evaluation import evaluate_accuracy
from optimum_snp.finetune import finetune


STARTS = {"refit": "least-squares reconstruction", "unrefit": "no reconstruction (same plan)"}
CRITERIA = {"snp": "snp", "v-mlp-contribution": {"v": "contribution", "mlp": "contribution"}}


def _sources(names: list[str]):
    """(label, pruner, train split, evaluation split, evaluation label) per model."""
    if names == ["embedded"]:
        digits = digits_dataset()
        pruner = SNPPruner.from_pretrained(load_embedded_model(show_progress=False))
        yield "digits ViT (embedded)", pruner, digits["train"], digits["test"], "test"
        return
    from bench_models import BENCH, load_bench_model, tuning_models

    for name in [n for item in names for n in (tuning_models() if item == "tune" else [item])]:
        model_dir, data = load_bench_model(name, show_progress=False)
        split = "validation" if BENCH[name].role == "tune" else "test"
        yield f"{name} ({BENCH[name].role})", SNPPruner.from_pretrained(model_dir), data["train"], data[split], split


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--keep", type=float, nargs="+", default=[0.5, 0.3], help="fractions of MACs kept")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="fine-tuning seeds")
    parser.add_argument("--models", nargs="+", default=["embedded"], help="'embedded', bench model names, or 'tune'")
    parser.add_argument("--criterion", choices=list(CRITERIA), default="snp", help="SNPConfig(criterion=...)")
    parser.add_argument(
        "--learning-rates",
        type=float,
        nargs="+",
        default=[1e-3],
        help="fine-tuning peak learning rates (default 1e-3, the main job's)",
    )
    parser.add_argument(
        "--starts",
        nargs="+",
        choices=list(STARTS),
        default=list(STARTS),
        help="'refit': the least-squares reconstructed model; 'unrefit': the same plan sliced without the refit",
    )
    args = parser.parse_args(argv)
    criterion = CRITERIA[args.criterion]

    print(
        "| model | MACs kept | start | learning rate | seed | top-1 zero-shot | top-1 after fine-tuning | "
        "fine-tuning (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label, pruner, train, evaluation, split in _sources(args.models):

        def top1(model, pruner=pruner, evaluation=evaluation):
            return evaluate_accuracy(model, evaluation, pruner.image_processor, show_progress=False)["top1"]

        label = f"{label}, {split} ({len(evaluation)} images; unpruned {top1(pruner.model):.2%})"
        for keep in args.keep:
            config = SNPConfig(target_macs_ratio=keep, criterion=criterion)
            # pruned once per target: the refit model, and the plan it was cut with (the choices made with the
            # refit) sliced without the refit; each seed fine-tunes its own copies
            refit = pruner.prune(config, calibration_dataset=train, show_progress=False)
            models = {"refit": refit, "unrefit": apply_plan(pruner.model, pruner.plan)}
            starts = {STARTS[kind]: models[kind] for kind in args.starts}
            zero_shots = {name: top1(pruned) for name, pruned in starts.items()}  # once per start, not per run
            for seed, learning_rate, (name, pruned) in itertools.product(
                args.seeds, args.learning_rates, starts.items()
            ):
                student = copy.deepcopy(pruned)
                zero_shot = zero_shots[name]
                start = time.perf_counter()
                finetune(
                    student,
                    pruner.model,
                    train,
                    pruner.image_processor,
                    epochs=args.epochs,
                    learning_rate=learning_rate,
                    distillation_type="soft",
                    seed=seed,
                    show_progress=False,
                )
                macs = pruner.report["macs"]["ratio"]
                print(
                    f"| {label} | {macs:.1%} | {name} | {learning_rate:g} | {seed} | {zero_shot:.2%} | "
                    f"{top1(student):.2%} | {time.perf_counter() - start:.1f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
