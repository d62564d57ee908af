"""Does reconstruction still help after fine-tuning? The embedded default (digits ViT), pruned with the same plan and
then either reconstructed (least squares, the default) or not, fine-tuned for the same epochs (soft distillation,
the main job's recipe, `optimum_snp.finetune.finetune`), top-1 on the digits test split.

    python benchmarks/reconstruction_finetune.py [--epochs 5] [--keep 0.5 0.3] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import time

from optimum_snp import SNPConfig, SNPPruner, apply_plan
from optimum_snp.embedded import digits_dataset, load_embedded_model
from optimum_snp.evaluation import evaluate_accuracy
from optimum_snp.finetune import finetune


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--keep", type=float, nargs="+", default=[0.5, 0.3], help="fractions of MACs kept")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="fine-tuning seeds")
    args = parser.parse_args(argv)

    digits = digits_dataset()
    pruner = SNPPruner.from_pretrained(load_embedded_model(show_progress=False))

    def top1(model):
        return evaluate_accuracy(model, digits["test"], pruner.image_processor, show_progress=False)["top1"]

    print(f"digits ViT, original top-1 {top1(pruner.model):.2%} (540 test images: 1 image = 0.19 pt)\n")
    print("| MACs kept | start | seed | top-1 zero-shot | top-1 after fine-tuning | fine-tuning (s) |")
    print("|---|---|---|---|---|---|")
    for keep in args.keep:
        reconstructed = pruner.prune(
            SNPConfig(target_macs_ratio=keep), calibration_dataset=digits["train"], show_progress=False
        )
        starts = {"least-squares reconstruction": reconstructed, "no reconstruction (same plan)": None}
        for seed in args.seeds:
            for name in starts:
                student = apply_plan(pruner.model, pruner.plan) if starts[name] is None else None
                if student is None:
                    student = pruner.prune(
                        SNPConfig(target_macs_ratio=keep), calibration_dataset=digits["train"], show_progress=False
                    )
                zero_shot = top1(student)
                start = time.perf_counter()
                finetune(
                    student,
                    pruner.model,
                    digits["train"],
                    pruner.image_processor,
                    epochs=args.epochs,
                    distillation_type="soft",
                    seed=seed,
                    show_progress=False,
                )
                print(
                    f"| {pruner.report['macs']['ratio']:.1%} | {name} | {seed} | {zero_shot:.2%} | {top1(student):.2%} "
                    f"| {time.perf_counter() - start:.1f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
