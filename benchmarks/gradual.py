"""One-shot SNP + fine-tuning vs gradual SNP (pruning inside fine-tuning) on the embedded digits ViT.

The paper leaves open whether pruning during training beats pruning once and then fine-tuning. For each MACs target:

- one-shot: prune once (SNP defaults, automatic allocation, least-squares reconstruction), then `--epochs` epochs of
  soft distillation from the unpruned model (`optimum_snp.finetune.finetune`);
- gradual: `gradual_prune` with `--steps` pruning steps inside the same `--epochs` epochs of soft distillation
  (steps at the start and then evenly spaced, targets interpolated geometrically, each step re-scored on the current
  weights and reconstructed).

Same seed, learning rate, batch size and total epochs. Zero-shot is top-1 right after the (last) pruning step, before
any further training; final is after all epochs; both on the digits test split. Wall time covers pruning and training
(not the zero-shot evaluation).

    python benchmarks/gradual.py [--epochs 5] [--steps 3] [--keep 0.3 0.5]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import TrainerCallback

from optimum_snp import SNPConfig, SNPPruner
from optimum_snp.accounting import model_size_of
from optimum_snp.artifacts import get_pruning_info
from optimum_snp.embedded import digits_dataset, load_embedded_model
from optimum_snp.evaluation import evaluate_accuracy
from optimum_snp.finetune import finetune
from optimum_snp.gradual import gradual_prune


class ZeroShot(TrainerCallback):
    """Measures top-1 right after every pruning step (it runs after the pruning callback, before the next batch)."""

    def __init__(self, top1):
        self.top1, self.after_step, self.seconds = top1, [], 0.0

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        info = get_pruning_info(model)
        done = len(info.report["gradual"]["steps"]) if info is not None and info.report else 0
        while len(self.after_step) < done:
            start = time.perf_counter()
            self.after_step.append(self.top1(model))
            self.seconds += time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--steps", type=int, default=3, help="pruning steps of the gradual run")
    parser.add_argument("--keep", type=float, nargs="+", default=[0.3, 0.5], help="fractions of MACs kept")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    digits = digits_dataset()
    pruner = SNPPruner.from_pretrained(load_embedded_model(show_progress=False))
    teacher, processor = pruner.model, pruner.image_processor
    macs0 = model_size_of(teacher).macs

    def top1(model):
        return evaluate_accuracy(model, digits["test"], processor, show_progress=False)["top1"]

    print(
        f"digits ViT ({macs0 / 1e6:.1f} MMACs): original top-1 {top1(teacher):.2%}; {args.epochs:g} epochs of soft "
        f"distillation, lr {args.learning_rate}, batch 32, seed {args.seed}; gradual: {args.steps} steps; "
        f"torch threads {torch.get_num_threads()}\n"
    )
    rows, details = [], []
    for keep in args.keep:
        config = SNPConfig(target_macs_ratio=keep, seed=args.seed)

        torch.manual_seed(args.seed)
        start = time.perf_counter()
        student = pruner.prune(config, calibration_dataset=digits["train"], show_progress=False)
        pruning_s = time.perf_counter() - start
        zero_shot = top1(student)
        result = finetune(
            student,
            teacher,
            digits["train"],
            processor,
            epochs=args.epochs,
            learning_rate=args.learning_rate,
            distillation_type="soft",
            seed=args.seed,
            show_progress=False,
        )
        wall = pruning_s + result["seconds"]
        rows.append(
            (keep, "one-shot + fine-tune", model_size_of(student).macs / macs0, zero_shot, top1(student), wall)
        )
        print("| " + " | ".join(_cells(rows[-1])) + " |", flush=True)

        torch.manual_seed(args.seed)
        probe = ZeroShot(top1)
        start = time.perf_counter()
        student = gradual_prune(
            teacher,
            config,
            digits["train"],
            digits["train"],
            processor,
            epochs=args.epochs,
            num_steps=args.steps,
            learning_rate=args.learning_rate,
            distillation_type="soft",
            seed=args.seed,
            show_progress=False,
            callbacks=[probe],
        )
        wall = time.perf_counter() - start - probe.seconds
        macs = model_size_of(student).macs / macs0
        rows.append((keep, f"gradual (k={args.steps})", macs, probe.after_step[-1], top1(student), wall))
        print("| " + " | ".join(_cells(rows[-1])) + " |", flush=True)
        steps = get_pruning_info(student).report["gradual"]["steps"]
        details.append(
            f"gradual to {keep:.0%}: "
            + "; ".join(
                f"step {s['step']} at epoch {s['epoch']:.2f}: {s['ratio_of_original']:.1%} of MACs, zero-shot "
                f"{acc:.2%}"
                for s, acc in zip(steps, probe.after_step, strict=True)
            )
        )

    print("\n| MACs target | method | MACs kept | zero-shot top-1 after (last) prune | final top-1 | wall time (s) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(_cells(row)) + " |")
    print()
    for line in details:
        print(line)
    return 0


def _cells(row) -> list[str]:
    keep, method, macs, zero_shot, final, wall = row
    return [f"{keep:.0%}", method, f"{macs:.1%}", f"{zero_shot:.2%}", f"{final:.2%}", f"{wall:.1f}"]


if __name__ == "__main__":
    raise SystemExit(main())
