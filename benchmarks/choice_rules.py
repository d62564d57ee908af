"""How should the validated allocation pick among its candidates? Every candidate of one default prune, scored on
the held-out calibration images (per image: what prune() sees) and on the evaluation split (what users get).

The default picks the candidate with the lowest mean held-out KL. With 32 held-out images (the default when this
script was run; 64 for images since) that mean is noisy, and a candidate can win it by chance against uniform
ratios. This script records, for each bench model and MACs target,
every candidate's per-image held-out KL and its evaluation-split top-1 / KL, and compares decision rules:

    argmin      the lowest mean held-out KL (the default until this script)
    paired      uniform ratios unless the argmin candidate's per-image KL is lower than uniform's in a one-sided
                paired t-test at the 5% level (a conventional level, not fitted)

With `--choice qk`, the same for the query/key criterion: `attention_kl` against weight magnitude, in the cells
of issue 9's goals (query/key pruned alone, 50% and 75% removed, with and without the refit; and the default prune
at each MACs target), with the rules

    argmin      the lower mean held-out KL (the default)
    paired      weight magnitude unless `attention_kl`'s per-image KL is lower in the one-sided paired t-test at
                the 5% level

Rules are chosen on the tune models (validation split) and reported on the report models (test split).

    python benchmarks/choice_rules.py [--models tune|report|all] [--targets 0.5 0.3] [--choice allocation|qk]
"""

from __future__ import annotations

import argparse
import os
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ablation import Bench  # noqa: E402
from bench_models import BENCH, report_models, tuning_models  # noqa: E402

import optimum_snp.validation as validation_module  # noqa: E402
from optimum_snp import SNPConfig  # noqa: E402
from optimum_snp.validation import paired_better  # noqa: E402


class Recorder:
    """Collects (pruned model, per-row held-out KL) of every candidate prune() evaluates, in order."""

    def __init__(self):
        self.models, self.rows = [], []
        self._reconstruct, self._divergence = validation_module.reconstruct, validation_module.divergence

    def __enter__(self):
        def reconstruct(original, pruned, *args, **kwargs):
            self.models.append(pruned)
            return self._reconstruct(original, pruned, *args, **kwargs)

        def divergence(reference, outputs, hidden, per_row=False):
            rows = self._divergence(reference, outputs, hidden, per_row=True)
            self.rows.append(rows)
            return rows if per_row else self._divergence(reference, outputs, hidden)

        validation_module.reconstruct, validation_module.divergence = reconstruct, divergence
        return self

    def __exit__(self, *exc):
        validation_module.reconstruct, validation_module.divergence = self._reconstruct, self._divergence


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="all", choices=["tune", "report", "all"])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.3])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--choice", default="allocation", choices=["allocation", "qk"])
    parser.add_argument("--rows-out", default=None, help="--choice qk: torch.save every cell's per-image rows there")
    args = parser.parse_args(argv)
    names = {"tune": tuning_models(), "report": report_models(), "all": list(BENCH)}[args.models]
    if args.choice == "qk":
        return qk_choice(names, args)
    print(
        "| model | MACs | candidate | held-out KL | eval top-1 / KL | argmin | paired (vs uniform: p) |\n"
        "|---|---|---|---|---|---|---|"
    )
    for name in names:
        bench = Bench(name, args.samples, args.seed)
        for target in args.targets:
            config = SNPConfig(target_macs_ratio=target, num_calibration_samples=args.samples, seed=args.seed)
            with Recorder() as rec:
                bench.pruner.prune(config, calibration_dataset=bench.calibration, show_progress=False)
            tried = bench.pruner.report["allocation"]["candidates"]
            assert len(tried) == len(rec.models) == len(rec.rows), (len(tried), len(rec.models), len(rec.rows))
            means = [float(r.mean()) for r in rec.rows]
            argmin = min(range(len(tried)), key=means.__getitem__)
            uniform = next(
                (
                    i
                    for i, t in enumerate(tried)
                    if t["allocation"] == "uniform" and t["qk_criterion"] == tried[0]["qk_criterion"]
                ),
                None,
            )
            for i, (t, model, rows) in enumerate(zip(tried, rec.models, rec.rows, strict=True)):
                result = bench.evaluator(model)
                p = "" if uniform is None or i == uniform else f"{paired_better(rows, rec.rows[uniform])[1]:.3f}"
                print(
                    f"| {bench.label if i == 0 else ''} | {target:.0%} | {t['allocation']} ({t['qk_criterion']}) | "
                    f"{means[i]:.4f} | {result['top1']:.1%} / {result['kl']:.3f} | "
                    f"{'**x**' if i == argmin else ''} | {p} |",
                    flush=True,
                )
            print(f"| | | chosen by prune(): {bench.pruner.report['allocation']['chosen']} "
                  f"({bench.pruner.report['criteria']['qk']}) | | | | |", flush=True)  # fmt: skip
    return 0


QK_CELLS = [
    ("q/k 50% removed, no refit", dict(qk_ratio=0.5, reconstruct="none")),
    ("q/k 75% removed, no refit", dict(qk_ratio=0.75, reconstruct="none")),
    ("q/k 50% removed, refit", dict(qk_ratio=0.5)),
    ("q/k 75% removed, refit", dict(qk_ratio=0.75)),
]


def qk_choice(names: list[str], args) -> int:
    """Per model and cell: both query/key candidates of the chosen allocation, their held-out and evaluation-split
    KL, the paired test's p-value, and what each rule picks; then the rules' sums."""
    print(
        "| model | cell | attention_kl: held-out KL / eval top-1 / KL | magnitude: held-out KL / eval top-1 / KL | "
        "p (attention_kl lower) | argmin | paired |\n|---|---|---|---|---|---|---|"
    )
    totals = {rule: {"kl": 0.0, "top1": 0.0, "above": 0} for rule in ("argmin", "paired")}
    saved = []
    cells = QK_CELLS + [(f"default, {t:.0%} MACs", dict(target_macs_ratio=t)) for t in args.targets]
    for name in names:
        bench = Bench(name, args.samples, args.seed)
        for label, kwargs in cells:
            config = SNPConfig(num_calibration_samples=args.samples, seed=args.seed, **kwargs)
            with Recorder() as rec:
                bench.pruner.prune(config, calibration_dataset=bench.calibration, show_progress=False)
            tried = bench.pruner.report["allocation"]["candidates"]
            assert len(tried) == len(rec.models) == len(rec.rows), (len(tried), len(rec.models), len(rec.rows))
            chosen = bench.pruner.report["allocation"]["chosen"]
            index = {t["qk_criterion"]: i for i, t in enumerate(tried) if t["allocation"] == chosen}
            if "magnitude" not in index:  # the chosen dims keep every query/key dim: nothing to choose
                index["magnitude"] = index["attention_kl"]
            a, m = index["attention_kl"], index["magnitude"]
            held = {k: float(rec.rows[i].mean()) for k, i in index.items()}
            evals = {k: bench.evaluator(rec.models[i]) for k, i in index.items()}
            better, p = paired_better(rec.rows[a], rec.rows[m]) if a != m else (True, float("nan"))
            saved.append(dict(model=name, cell=label, rows={k: rec.rows[i] for k, i in index.items()}, evals=evals))
            picks = {
                "argmin": "attention_kl" if held["attention_kl"] <= held["magnitude"] else "magnitude",
                "paired": "attention_kl" if better else "magnitude",
            }
            assert picks["argmin"] == bench.pruner.report["criteria"]["qk"], (picks, bench.pruner.report["criteria"])
            for rule, pick in picks.items():
                totals[rule]["kl"] += evals[pick]["kl"]
                if label.startswith("default"):
                    totals[rule]["top1"] += evals[pick]["top1"]
                else:
                    totals[rule]["above"] += evals[pick]["kl"] > evals["magnitude"]["kl"]
            parts = [
                f"{held[k]:.4f} / {evals[k]['top1']:.1%} / {evals[k]['kl']:.3f}" for k in ("attention_kl", "magnitude")
            ]
            print(f"| {bench.label} | {label} ({chosen}) | {parts[0]} | {parts[1]} | {p:.3f} | {picks['argmin']} | "
                  f"{picks['paired']} |", flush=True)  # fmt: skip
    if args.rows_out:
        import torch

        torch.save(saved, args.rows_out)
    for rule, t in totals.items():
        print(
            f"\n{rule}: summed eval KL {t['kl']:.3f} over all cells; summed top-1 {t['top1']:.1%} over the default "
            f"cells; query/key-only cells with KL above magnitude's: {t['above']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
