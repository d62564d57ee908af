"""Two extensions of the least-squares refit, tried after the default prune() on the tune models (not adopted).

- `last residual`: the last `k` layers refit again with refit_target='residual' (their branches fitted so that the
  layer's output, the final hidden state for k = 1, matches the unpruned model's), starting from the default's
  refit model.
- `head refit`: each classifier head refit by ridge least squares (towards its sliced weights; ridge relative to the
  mean diagonal of X^T X, as in the refit) to the unpruned model's head outputs on the calibration images (one row
  per image: the head reads the class / distillation token).

Both use prune()'s own calibration batches (the same 64 images). Tune models, validation split; top-1 / logit KL
against the unpruned model (zero-shot).

    python benchmarks/refit_extensions.py [--models tune] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ablation import Bench  # noqa: E402
from bench_models import report_models, tuning_models  # noqa: E402

from optimum_snp import SNPConfig, get_adapter  # noqa: E402
from optimum_snp.reconstruction import ProjectionStats, layer_inputs, next_layer_inputs, reconstruct  # noqa: E402


HEAD_RIDGES = (0.01, 0.1, 1.0, 10.0)


def cell(result: dict) -> str:
    return f"{result['top1']:.1%} / {result['kl']:.3f}"


def calibration(bench: Bench, config: SNPConfig) -> list:
    """The calibration batches prune() refits on (without the held-out ones)."""
    batches, _, _ = bench.pruner._calibration_batches(
        config, config.criterion_per_group(), bench.calibration, "train", False
    )
    return batches


@torch.no_grad()
def refit_last_layers(bench: Bench, config: SNPConfig, batches: list, k: int) -> dict:
    pruned = bench.pruner.prune(config, calibration_dataset=bench.calibration, show_progress=False)
    num_layers = get_adapter(pruned).num_layers
    first = num_layers - k
    inputs = layer_inputs(pruned, batches)
    for idx in range(first):
        inputs, _ = next_layer_inputs(pruned, idx, inputs)
    reconstruct(
        bench.pruner.model,
        pruned,
        bench.pruner.plan,
        batches,
        refit_target="residual",
        layers=list(range(first, num_layers)),
        start=(first, inputs),
        show_progress=False,
    )
    return bench.evaluator(pruned)


@torch.no_grad()
def refit_heads(bench: Bench, config: SNPConfig, batches: list, ridge: float) -> dict:
    pruned = bench.pruner.prune(config, calibration_dataset=bench.calibration, show_progress=False)
    for head_o, head_p in zip(
        get_adapter(bench.pruner.model).classifier_modules(), get_adapter(pruned).classifier_modules(), strict=True
    ):
        features, targets = [], []
        handles = [
            head_p.register_forward_hook(lambda m, args, out, into=features: into.append(args[0].detach())),
            head_o.register_forward_hook(lambda m, args, out, into=targets: into.append(out.detach())),
        ]
        try:
            for batch in batches:
                pruned(pixel_values=batch)
                bench.pruner.model(pixel_values=batch)
        finally:
            for handle in handles:
                handle.remove()
        x, y = torch.cat(features), torch.cat(targets)
        stats = ProjectionStats.empty(x.shape[-1], y.shape[-1])
        stats.add(x, y)
        weight, bias = stats.solve(head_p.weight, head_p.bias, ridge)
        head_p.weight.copy_(weight.to(head_p.weight.dtype))
        head_p.bias.copy_(bias.to(head_p.bias.dtype))
    return bench.evaluator(pruned)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tune", choices=["tune", "report"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args(argv)
    names = tuning_models() if args.models == "tune" else report_models()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; seed {args.seed}\n")
    header = ["model", "MACs", "default", "last layer residual", "last 2 layers residual"]
    header += [f"heads refit, ridge {r:g}" for r in HEAD_RIDGES]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name in names:
        bench = Bench(name, args.samples, args.seed)
        for target in (0.5, 0.3):
            config = SNPConfig(num_calibration_samples=args.samples, seed=args.seed, target_macs_ratio=target)
            batches = calibration(bench, config)
            cells = [cell(bench.run(target_macs_ratio=target))]
            cells += [cell(refit_last_layers(bench, config, batches, k)) for k in (1, 2)]
            cells += [cell(refit_heads(bench, config, batches, r)) for r in HEAD_RIDGES]
            print(f"| {bench.label} | {target:.0%} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
