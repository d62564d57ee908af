"""The paper's size table: `python benchmarks/paper_sizes.py` (models built from configs, no network needed).

For each of the authors' ratio tables it builds the matching DeiT (random weights, 224x224, 1000 classes),
plans with the weight-magnitude criterion, slices, prints params/MACs against the paper, saves the pruned
model, reloads it with `AutoModelForImageClassification` and checks that the logits are identical.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from optimum_snp.paper import PAPER_TABLES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="snp-output/paper-sizes", help="where the pruned models are saved")
    parser.add_argument("--tables", nargs="+", default=list(PAPER_TABLES), choices=list(PAPER_TABLES))
    args = parser.parse_args(argv)

    from transformers import AutoModelForImageClassification, DeiTForImageClassification

    from optimum_snp import apply_plan, build_plan, model_size_of
    from optimum_snp.paper import deit_config

    torch.manual_seed(0)
    rows = []
    for table in args.tables:
        name, paper_params, paper_gflops = PAPER_TABLES[table]
        start = time.perf_counter()
        model = DeiTForImageClassification(deit_config(name)).eval()
        pruned = apply_plan(model, build_plan(model, table))
        elapsed = time.perf_counter() - start
        out_dir = os.path.join(args.output_dir, f"deit-{name}-{table}")
        pruned.save_pretrained(out_dir)
        reloaded = AutoModelForImageClassification.from_pretrained(out_dir).eval()
        x = torch.randn(2, 3, 224, 224)
        with torch.inference_mode():
            identical = torch.equal(reloaded(x).logits, pruned(x).logits)
        before, after = model_size_of(model), model_size_of(pruned)
        rows.append((table, name, before, after, paper_params, paper_gflops, identical, elapsed, out_dir))

    header = f"{'table':<13}{'model':<7}{'params (M)':>22}{'paper':>7}{'GMACs':>18}{'paper':>7}{'reload':>8}{'s':>6}"
    print(header)
    print("-" * len(header))
    for table, name, before, after, pp, pg, identical, elapsed, _ in rows:
        params = f"{before.mparams:6.2f} -> {after.mparams:6.2f}"
        macs = f"{before.gmacs:5.2f} -> {after.gmacs:5.2f}"
        paper_p = f"{pp:.1f}" if pp else "-"
        print(
            f"{table:<13}{name:<7}{params:>22}{paper_p:>7}{macs:>18}{pg:>7.1f}"
            f"{'same' if identical else 'DIFF':>8}{elapsed:>6.1f}"
        )
    print(
        f"\nPruned models saved under {os.path.abspath(args.output_dir)}/ (load with "
        "AutoModelForImageClassification.from_pretrained after `import optimum_snp`, or trust_remote_code=True)."
    )
    return 0 if all(r[6] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
