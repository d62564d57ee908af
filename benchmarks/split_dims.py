"""Why pruned dims cost more per MAC on CPU, measured: the SDPA kernel with split q/k vs v head dims, and widths
that are not multiples of 8.

1. `F.scaled_dot_product_attention` on (batch 16, 6 heads, 197 tokens) with various query/key and value head dims:
   unpadded, zero-padded to the wider side (what SNP models do under CPU SDPA), and eager (matmul, softmax, matmul).
2. DeiT-S with the authors' `DeiT_s` dims, and the same dims with one group at a time rounded to a multiple of 8
   (hidden; query/key and value per head; MLP; all): ms per batch and per GMAC, batch 1 and 16, interleaved.

    python benchmarks/split_dims.py [--runs 15] [--attention sdpa eager]
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from latency import interleaved_latency, machine_line


def kernel_section(runs: int) -> None:
    batch, heads, tokens = 16, 6, 197
    print("## 1. attention kernel, batch 16, 6 heads, 197 tokens (ms per call)\n")
    print("| q/k dim | v dim | SDPA | SDPA, zero-padded to the wider | eager |")
    print("|---|---|---|---|---|")
    for dqk, dv in [(64, 64), (32, 32), (40, 24), (25, 51), (13, 19), (17, 9), (24, 24), (23, 23)]:
        q, k, v = (
            torch.randn(batch, heads, tokens, dqk),
            torch.randn(batch, heads, tokens, dqk),
            torch.randn(batch, heads, tokens, dv),
        )
        width = max(dqk, dv)

        def padded(q=q, k=k, v=v, dqk=dqk, dv=dv, width=width):
            qq, kk, vv = F.pad(q, (0, width - dqk)), F.pad(k, (0, width - dqk)), F.pad(v, (0, width - dv))
            return F.scaled_dot_product_attention(qq, kk, vv, scale=0.125)[..., :dv]

        fns = {
            "sdpa": lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, scale=0.125),
            "padded": padded,
            "eager": lambda q=q, k=k, v=v: torch.softmax(q @ k.transpose(-1, -2) * 0.125, -1) @ v,
        }
        with torch.inference_mode():
            t = interleaved_latency(fns, runs=runs, warmup=2)
        cells = " | ".join(f"{t[name]['median'] * 1e3:.2f}" for name in fns)
        print(f"| {dqk} | {dv} | {cells} |")


def rounding_section(runs: int, attention: str) -> None:
    from transformers import DeiTForImageClassification

    from optimum_snp import SNPConfig, SNPDeiTConfig, SNPDeiTForImageClassification, SNPPruner, model_size
    from optimum_snp.paper import deit_config

    torch.manual_seed(0)
    original = DeiTForImageClassification(deit_config("small")).eval()
    table = SNPPruner(original).prune(
        SNPConfig.from_ratio_table("DeiT_s", criterion="magnitude", reconstruct="none"), show_progress=False
    )
    fields = {
        k: v
        for k, v in table.config.to_dict().items()
        if k not in ("model_type", "transformers_version", "architectures")
    }

    def r8(x: int) -> int:
        return max(8, round(x / 8) * 8)

    def build(*groups):
        f = dict(fields)
        if "hidden" in groups:
            f["hidden_size"] = r8(f["hidden_size"])
        for key in ("qk_head_dims", "v_head_dims", "intermediate_sizes"):
            if key in groups:
                f[key] = [r8(x) for x in f[key]]
        config = SNPDeiTConfig(**f)
        config._attn_implementation = attention
        return SNPDeiTForImageClassification(config).eval(), model_size(config, "DeiTForImageClassification").macs

    models = {
        "DeiT_s table": build(),
        "hidden rounded": build("hidden"),
        "q/k and v rounded": build("qk_head_dims", "v_head_dims"),
        "MLP rounded": build("intermediate_sizes"),
        "all rounded": build("hidden", "qk_head_dims", "v_head_dims", "intermediate_sizes"),
    }
    print(f"\n## 2. DeiT-S `DeiT_s` dims, groups rounded to multiples of 8 ({attention} attention)\n")
    print("| dims | GMACs | b1 ms | b1 ms/GMAC | b16 ms | b16 ms/GMAC per image |")
    print("|---|---|---|---|---|---|")
    results = {}
    for batch in (1, 16):
        x = torch.randn(batch, 3, 224, 224)
        with torch.inference_mode():
            results[batch] = interleaved_latency(
                {name: (lambda m=m, x=x: m(pixel_values=x)) for name, (m, _) in models.items()}, runs=runs, warmup=2
            )
    for name, (_, macs) in models.items():
        g = macs / 1e9
        b1, b16 = results[1][name]["median"] * 1e3, results[16][name]["median"] * 1e3
        print(f"| {name} | {g:.3f} | {b1:.1f} | {b1 / g:.2f} | {b16:.1f} | {b16 / g / 16:.2f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--attention", nargs="+", default=["sdpa", "eager"], choices=["sdpa", "eager"])
    args = parser.parse_args(argv)
    print(f"# Split and unaligned dims on CPU\n\nmachine: {machine_line()}; interleaved medians of {args.runs} runs\n")
    kernel_section(args.runs)
    for attention in args.attention:
        rounding_section(args.runs, attention)
    return 0


if __name__ == "__main__":
    sys.exit(main())
