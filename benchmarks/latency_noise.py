"""How stable are latency ratios on this machine? DeiT-S (random weights) against the same model pruned to 30% of its
MACs (uniform ratios, magnitude, no refit), timed in interleaved rounds (order alternating), `--reps` measurements of
`--rounds` rounds each. Per measurement, the pruned / unpruned ratio by five estimators: the ratio of the medians
(`med`), of the minima (`min`), of the 10th and 25th percentiles (`p10`, `p25`), and the median of the per-round
ratios (`pairmed`, what `measure_latency(..., reference=...)` uses); then each estimator's spread across the
measurements (standard deviation and range, relative to its mean).

    python benchmarks/latency_noise.py [--reps 8] [--batch-size 1] [--rounds 40]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args(argv)

    from latency import machine_line
    from transformers import DeiTForImageClassification

    from optimum_snp import SNPConfig, SNPPruner
    from optimum_snp.paper import deit_config

    torch.manual_seed(0)
    original = DeiTForImageClassification(deit_config("small")).eval()
    original.set_attn_implementation("sdpa")
    config = SNPConfig(target_macs_ratio=0.3, criterion="magnitude", reconstruct="none", allocation="uniform")
    pruned = SNPPruner(original).prune(config, show_progress=False).eval()
    x = torch.randn(args.batch_size, 3, 224, 224)
    fns = {"original": lambda: original(pixel_values=x), "pruned": lambda: pruned(pixel_values=x)}
    print(
        f"machine: {machine_line()}; DeiT-S vs 30% MACs, batch {args.batch_size}, {args.rounds} rounds x {args.reps}"
    )

    def quantile(values: list[float], f: float) -> float:
        return values[int(f * (len(values) - 1))]

    rows = []
    with torch.inference_mode():
        for fn in fns.values():
            for _ in range(3):
                fn()
        for _ in range(args.reps):
            times = {name: [] for name in fns}
            for r in range(args.rounds):
                for name in list(fns) if r % 2 == 0 else list(fns)[::-1]:
                    start = time.perf_counter()
                    fns[name]()
                    times[name].append(time.perf_counter() - start)
            o, p = sorted(times["original"]), sorted(times["pruned"])
            pairs = sorted(a / b for a, b in zip(times["pruned"], times["original"], strict=True))
            row = {
                "med": quantile(p, 0.5) / quantile(o, 0.5),
                "min": p[0] / o[0],
                "p10": quantile(p, 0.1) / quantile(o, 0.1),
                "p25": quantile(p, 0.25) / quantile(o, 0.25),
                "pairmed": quantile(pairs, 0.5),
                "unpruned_median_ms": quantile(o, 0.5) * 1e3,
            }
            rows.append(row)
            print({k: round(v, 4) for k, v in row.items()}, flush=True)
    for key in rows[0]:
        values = [r[key] for r in rows]
        mean = statistics.mean(values)
        spread = statistics.stdev(values) / mean if len(values) > 1 else 0.0
        print(f"{key}: mean {mean:.4f}, sd/mean {spread:.2%}, range {(max(values) - min(values)) / mean:.2%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
