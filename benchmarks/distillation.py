"""Recovery after pruning on the embedded digits ViT: soft vs hard vs no distillation at the same budget.

The model is pruned to ~50% of its MACs (SNP defaults, automatic allocation), then fine-tuned from the same pruned
weights with each loss for the same epochs and learning rate; top-1 on the digits test split.

    python benchmarks/distillation.py [--epochs 5] [--keep 0.5]
"""

from __future__ import annotations

import argparse
import copy

from optimum_snp import SNPConfig, SNPPruner
from optimum_snp.embedded import digits_dataset, load_embedded_model
from optimum_snp.evaluation import evaluate_accuracy
from optimum_snp.finetune import finetune


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--keep", type=float, default=0.5, help="fraction of MACs kept")
    args = parser.parse_args(argv)

    digits = digits_dataset()
    pruner = SNPPruner.from_pretrained(load_embedded_model(show_progress=False))

    def top1(model):
        return evaluate_accuracy(model, digits["test"], pruner.image_processor, show_progress=False)["top1"]

    pruned = pruner.prune(
        SNPConfig(target_macs_ratio=args.keep), calibration_dataset=digits["train"], show_progress=False
    )
    original, zero_shot = top1(pruner.model), top1(pruned)
    print(
        f"digits ViT: original top-1 {original:.2%}; pruned to {pruner.report['macs']['ratio']:.1%} of the MACs: "
        f"{zero_shot:.2%} before fine-tuning; {args.epochs:g} epochs, lr {args.learning_rate}, batch 32\n"
    )
    print("| distillation | top-1 after fine-tuning | vs original | wall time (s) |")
    print("|---|---|---|---|")
    for kind in ("soft", "hard", "none"):
        student = copy.deepcopy(pruned)
        result = finetune(
            student,
            pruner.model,
            digits["train"],
            pruner.image_processor,
            epochs=args.epochs,
            learning_rate=args.learning_rate,
            distillation_type=kind,
            show_progress=False,
        )
        acc = top1(student)
        print(f"| {kind} | {acc:.2%} | {100 * (acc - original):+.2f} pt | {result['seconds']} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
