"""Would choosing the query/key criterion BEFORE the least-squares refit pick what the choice after it picks?

The 'validated' query/key criterion refits the model once per criterion (attention_kl, magnitude) and keeps the one
with the lower logit divergence on held-out calibration images. Choosing before the refit would save one refit
(issue 9's speed goal). On the TUNE models only, for fixed dims (query/key alone, uniform allocation) and for the
default allocation, this prints each criterion's held-out divergence without and with the refit, and the winner.

    python benchmarks/qk_choice_before_refit.py [digits-vit patches-vit]
"""

from __future__ import annotations

import sys
import warnings

from bench_models import load_bench_model

from optimum_snp import SNPConfig, SNPPruner


SETTINGS = [
    dict(qk_ratio=0.5),
    dict(qk_ratio=0.75),
    dict(target_macs_ratio=0.5, allocation="uniform"),
    dict(target_macs_ratio=0.3, allocation="uniform"),
    dict(target_macs_ratio=0.5),
    dict(target_macs_ratio=0.3),
]


def main(argv=None) -> int:
    warnings.simplefilter("ignore")
    names = (argv if argv is not None else sys.argv[1:]) or ["digits-vit", "patches-vit"]
    for name in names:
        model_dir, data = load_bench_model(name, show_progress=False)
        pruner = SNPPruner.from_pretrained(model_dir)
        for setting in SETTINGS:
            lines = []
            for reconstruct in ("none", "least_squares"):
                for seed in (0, 1):
                    config = SNPConfig(seed=seed, reconstruct=reconstruct, criterion={"qk": "validated"}, **setting)
                    pruner.prune(config, calibration_dataset=data["train"], show_progress=False)
                    allocation = pruner.report["allocation"]
                    divergences = {
                        c["qk_criterion"]: round(c["divergence"], 4)
                        for c in allocation["candidates"]
                        if c["allocation"] == allocation["chosen"]
                    }
                    winner = min(divergences, key=divergences.get) if divergences else "-"
                    lines.append(f"{reconstruct} seed {seed}: {divergences} -> {winner} ({allocation['chosen']})")
            print(name, setting, *lines, sep="\n   ", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
