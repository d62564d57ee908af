"""Latency of SNP-pruned DeiTs against the unpruned ones, in PyTorch, measured side by side in one process.

For every DeiT size the original model and its pruned variants are timed interleaved (one call of each per round,
order alternating), after warm-up, under `torch.inference_mode`, at 224x224 with batch 1 and 16, eager and SDPA
attention; a ratio is the original's median over the variant's median (>= 30 runs). Weights are random (DeiT
configs from `optimum_snp.paper`): speed depends only on the dims, which come from the authors' ratio tables or
from automatic allocation (`target_macs`) with the data-free magnitude criterion.

Variants:
  DeiT_t / DeiT_s / DeiT_s_small / DeiT_b   the authors' per-layer tables (paper: SNP_METHOD section 5)
  <table> round_to=8                        the same table, kept dims rounded to multiples of 8 (DeiT_s: also 16)
  uniform                                   one ratio for q/k, v and MLP in every layer, at the table's MACs
  DeiT_s, SDPA unpadded                     split q/k vs v dims without the zero-padding SNP models do on CPU
  heads @3.5G                               DeiT-B, half the heads removed, the rest allocated to 3.5 GMACs

    python benchmarks/deit_latency.py                       # all sizes (about 20 minutes on 2 cores)
    python benchmarks/deit_latency.py --sizes small --runs 30 --batch-sizes 1 16
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from latency import interleaved_latency, machine_line


PAPER_SPEEDUP = {"DeiT_t": "1.38x", "DeiT_s": "1.38x", "DeiT_s_small": "1.60x", "DeiT_b": "1.89x", "heads": "2.65x"}
TABLES = {"tiny": ["DeiT_t"], "small": ["DeiT_s", "DeiT_s_small"], "base": ["DeiT_b"]}
NOPAD = "sdpa_unpadded"


def register_unpadded_sdpa() -> None:
    """transformers' SDPA under another name: SNP attention pads split dims only for "sdpa", so this measures the
    unpadded path."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    AttentionInterface.register(NOPAD, sdpa_attention_forward)


def uniform_ratio_for(model, target_macs: float) -> float:
    """One ratio r for q/k, v and MLP (every layer) whose pruned model has about `target_macs` MACs (bisection)."""
    from optimum_snp import get_adapter, model_size
    from optimum_snp.accounting import architecture_of
    from optimum_snp.ratios import PruningRatios

    adapter = get_adapter(model)
    dims = adapter.layer_dims()
    lo, hi = 0.0, 0.95
    for _ in range(40):
        r = (lo + hi) / 2
        ratios = PruningRatios.uniform(len(dims), qk=r, v=r, mlp=r)
        hidden, kept = ratios.kept_dims(adapter.hidden_size, dims)
        macs = model_size(model.config, architecture_of(model), hidden_size=hidden, layer_dims=kept).macs
        lo, hi = (r, hi) if macs > target_macs else (lo, r)
    return hi


def variants(size: str, model) -> dict:
    """name -> (SNPConfig, attention override or None, paper key)."""
    from optimum_snp import SNPConfig, model_size_of

    out = {}
    for table in TABLES[size]:
        out[table] = (SNPConfig.from_ratio_table(table, criterion="magnitude", round_to=1), None, table)
        out[f"{table} round_to=8"] = (SNPConfig.from_ratio_table(table, criterion="magnitude", round_to=8), None, "")
    if size == "small":
        table = SNPConfig.from_ratio_table("DeiT_s", criterion="magnitude", round_to=1)
        pruned = _prune(model, table)
        r = uniform_ratio_for(model, model_size_of(pruned).macs)
        uniform = SNPConfig(qk_ratio=r, v_ratio=r, mlp_ratio=r, criterion="magnitude", round_to=1)
        out["uniform @DeiT_s MACs"] = (uniform, None, "")
        for k in (16,):
            out[f"DeiT_s round_to={k}"] = (
                SNPConfig.from_ratio_table("DeiT_s", criterion="magnitude", round_to=k),
                None,
                "",
            )
        out["DeiT_s, SDPA unpadded"] = (table, NOPAD, "")
    if size == "base":
        heads = dict(target_macs=3.5e9, head_ratio=0.5, criterion="magnitude", allocation="scores", round_to=1)
        out["heads @3.5G"] = (SNPConfig(**heads), None, "heads")
        out["heads @3.5G round_to=8"] = (SNPConfig(**heads, round_to=8), None, "")
    return out


def _prune(model, config):
    from dataclasses import replace

    from optimum_snp import SNPPruner

    # random weights and no data: the dims are what matters here, so no refit (it needs calibration images)
    return SNPPruner(model).prune(replace(config, reconstruct="none"), show_progress=False).eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small", "base"], choices=["tiny", "small", "base"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--attention", nargs="+", default=["eager", "sdpa"], choices=["eager", "sdpa"])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    if args.runs < 30:
        print(f"note: --runs {args.runs} is below the 30 runs the README numbers use", file=sys.stderr)

    from transformers import DeiTForImageClassification

    from optimum_snp import model_size_of
    from optimum_snp.paper import deit_config

    register_unpadded_sdpa()
    print(f"# DeiT latency, original vs SNP-pruned (PyTorch)\n\nmachine: {machine_line()}")
    print(
        f"interleaved, median of {args.runs} runs after {args.warmup} warm-up rounds, torch.inference_mode, 224x224\n"
    )
    rows = []
    start = time.perf_counter()
    for size in args.sizes:
        torch.manual_seed(0)
        original = DeiTForImageClassification(deit_config(size)).eval()
        pruned = {
            name: (_prune(original, cfg), attn, paper) for name, (cfg, attn, paper) in variants(size, original).items()
        }
        base = model_size_of(original)
        for attention in args.attention:
            original.set_attn_implementation(attention)
            for model, attn, _ in pruned.values():
                model.set_attn_implementation(attn if attn and attention == "sdpa" else attention)
            for batch in args.batch_sizes:
                x = torch.randn(batch, 3, 224, 224)
                fns = {"original": lambda m=original, x=x: m(pixel_values=x)}
                for name, (model, attn, _) in pruned.items():
                    if attn and attention != "sdpa":
                        continue  # the unpadded variant only differs under SDPA
                    fns[name] = lambda m=model, x=x: m(pixel_values=x)
                with torch.inference_mode():
                    timing = interleaved_latency(fns, runs=args.runs, warmup=args.warmup)
                for name, t in timing.items():
                    if name == "original":
                        continue
                    model, _, paper = pruned[name]
                    size_after = model_size_of(model)
                    rows.append(
                        dict(
                            size=size,
                            name=name,
                            attention=attention,
                            batch=batch,
                            gmacs=f"{base.gmacs:.2f} -> {size_after.gmacs:.2f}",
                            original_ms=timing["original"]["median"] * 1e3,
                            pruned_ms=t["median"] * 1e3,
                            ratio=timing["original"]["median"] / t["median"],
                            paper=PAPER_SPEEDUP.get(paper, ""),
                        )
                    )
                print(
                    f"  measured {size} {attention} batch {batch} ({time.perf_counter() - start:.0f} s)",
                    file=sys.stderr,
                )

    # one row per (size, variant): the ratios of every attention x batch column
    columns = [(a, b) for a in args.attention for b in args.batch_sizes]
    header = "| DeiT | pruned with | GMACs | " + " | ".join(f"{a} b{b}" for a, b in columns) + " | paper (Xeon, .pt) |"
    print(header)
    print("|" + "---|" * (4 + len(columns)))
    seen = []
    for row in rows:
        key = (row["size"], row["name"])
        if key in seen:
            continue
        seen.append(key)
        cells = []
        for a, b in columns:
            match = [r for r in rows if (r["size"], r["name"], r["attention"], r["batch"]) == (*key, a, b)]
            cells.append(f"{match[0]['ratio']:.2f}x" if match else "")
        print(f"| {row['size']} | {row['name']} | {row['gmacs']} | " + " | ".join(cells) + f" | {row['paper']} |")
    print("\nabsolute medians (ms per batch): original -> pruned")
    for row in rows:
        print(
            f"  {row['size']:5s} {row['name']:24s} {row['attention']:5s} b{row['batch']:<3d} "
            f"{row['original_ms']:8.1f} -> {row['pruned_ms']:8.1f}"
        )
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
