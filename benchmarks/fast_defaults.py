"""Fast by default (issue 12): DeiT-S pruned with default settings against uniform dims at the same MACs.

Default settings round kept dims to multiples of 8 for groups of 64+ units (`SNPConfig.round_to=None`). Side by side
in one process (interleaved, median of `--runs`, `torch.inference_mode`, SDPA, 224x224, random weights: speed depends
only on the dims):

  DeiT_s table, default            SNPConfig.from_ratio_table("DeiT_s")            (dims rounded)
  DeiT_s table, exact              ... round_to=1                                    (the authors' dims exactly)
  uniform @ the table's MACs       one ratio for q/k, v and MLP in every layer, round_to=1 (the plain baseline)
  auto 50%, default                SNPConfig(target_macs_ratio=0.5), allocation 'scores' on weight magnitude
  uniform @ 50%                    one ratio everywhere, round_to=1

The bar: default / uniform >= 0.97 (speed), batch 1 and 16.

    python benchmarks/fast_defaults.py [--runs 20]
"""

from __future__ import annotations

import argparse
import time

import torch
from deit_latency import _prune, uniform_ratio_for
from latency import interleaved_latency, machine_line


def main(argv=None) -> int:
    from transformers import DeiTForImageClassification

    from optimum_snp import SNPConfig, model_size_of
    from optimum_snp.paper import deit_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    original = DeiTForImageClassification(deit_config("small")).eval()
    base = model_size_of(original).macs
    magnitude = dict(criterion="magnitude")
    models = {
        "DeiT_s table, default": _prune(original, SNPConfig.from_ratio_table("DeiT_s", **magnitude)),
        "DeiT_s table, exact": _prune(original, SNPConfig.from_ratio_table("DeiT_s", round_to=1, **magnitude)),
    }
    r = uniform_ratio_for(original, model_size_of(models["DeiT_s table, default"]).macs)
    models["uniform @ table MACs"] = _prune(
        original, SNPConfig(qk_ratio=r, v_ratio=r, mlp_ratio=r, round_to=1, **magnitude)
    )
    models["auto 50%, default"] = _prune(original, SNPConfig(target_macs_ratio=0.5, allocation="scores", **magnitude))
    r = uniform_ratio_for(original, 0.5 * base)
    models["uniform @ 50%"] = _prune(original, SNPConfig(qk_ratio=r, v_ratio=r, mlp_ratio=r, round_to=1, **magnitude))
    for model in (original, *models.values()):
        model.set_attn_implementation("sdpa")
    print(f"# DeiT-S: default settings vs uniform dims at the same MACs\n\nmachine: {machine_line()}\n")
    print("| variant | GMACs | " + " | ".join(f"b{b} ms | b{b} speed-up" for b in args.batch_sizes) + " |")
    print("|---|---|" + "---|---|" * len(args.batch_sizes))
    timings = {}
    for batch in args.batch_sizes:
        x = torch.randn(batch, 3, 224, 224)
        fns = {"original": lambda x=x: original(pixel_values=x)}
        fns.update({name: (lambda m=m, x=x: m(pixel_values=x)) for name, m in models.items()})
        with torch.inference_mode():
            timings[batch] = interleaved_latency(fns, runs=args.runs, warmup=args.warmup)
    for name in ["original", *models]:
        macs = base if name == "original" else model_size_of(models[name]).macs
        cells = []
        for batch in args.batch_sizes:
            t = timings[batch]
            cells.append(f"{t[name]['median'] * 1e3:.1f} | {t['original']['median'] / t[name]['median']:.2f}x")
        print(f"| {name} | {macs / 1e9:.2f} | " + " | ".join(cells) + " |")
    print("\nratio default / uniform at the same MACs (speed; the bar is >= 0.97):")
    for default, uniform in (
        ("DeiT_s table, default", "uniform @ table MACs"),
        ("auto 50%, default", "uniform @ 50%"),
    ):
        ratios = [timings[b][uniform]["median"] / timings[b][default]["median"] for b in args.batch_sizes]
        print(
            f"  {default} vs {uniform}: "
            + ", ".join(f"b{b} {q:.2f}" for b, q in zip(args.batch_sizes, ratios, strict=False))
        )
    return 0


if __name__ == "__main__":
    start = time.perf_counter()
    code = main()
    print(f"\nTotal: {time.perf_counter() - start:.0f} s")
    raise SystemExit(code)
