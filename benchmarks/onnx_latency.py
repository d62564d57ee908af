"""onnxruntime latency of SNP-pruned DeiTs against the unpruned ones, next to PyTorch's, in one process.

For every DeiT size the original model (random weights, `optimum_snp.paper.deit_config`) is pruned with the authors'
ratio table (data-free magnitude criterion: speed depends only on the dims), both are exported with
`optimum_snp.exporters.export_onnx` (validated against PyTorch) and timed at 224x224, batch 1 and 16:
the pair in PyTorch (`torch.inference_mode`), then the pair in onnxruntime (CPU), each pair interleaved (one call of
each per round, order alternating) after warm-up. A speed-up is the original's median over the pruned model's
(>= 30 runs); PyTorch and onnxruntime use the same number of threads.

    python benchmarks/onnx_latency.py                       # DeiT-T and DeiT-S (about 6 minutes on 2 cores)
    python benchmarks/onnx_latency.py --sizes base          # DeiT-B (about 12 minutes on 2 cores)
    python benchmarks/onnx_latency.py --sizes small --runs 30 --batch-sizes 1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
from latency import interleaved_latency, machine_line


TABLES = {"tiny": "DeiT_t", "small": "DeiT_s", "base": "DeiT_b"}
SIZE_OF_TABLE = {"DeiT_t": "tiny", "DeiT_s": "small", "DeiT_s_small": "small", "DeiT_b": "base"}


def _prune(model, table: str, round_to: int = 1):
    from optimum_snp import SNPConfig, SNPPruner

    config = SNPConfig.from_ratio_table(table, criterion="magnitude", reconstruct="none", round_to=round_to)
    return SNPPruner(model).prune(config, show_progress=False).eval()


def measure(models, sessions, batch: int, runs: int, warmup: int) -> dict:
    """{(runtime, "original" | "pruned"): median ms} of the (original, pruned) pair in PyTorch, then onnxruntime."""
    x = torch.randn(batch, 3, 224, 224)
    pixels = x.numpy()
    torch_fns = {name: (lambda m=m: m(pixel_values=x)) for name, m in zip(("original", "pruned"), models, strict=True)}
    ort_fns = {
        name: (lambda s=s: s.run(None, {"pixel_values": pixels}))
        for name, s in zip(("original", "pruned"), sessions, strict=True)
    }
    with torch.inference_mode():
        pt = interleaved_latency(torch_fns, runs=runs, warmup=warmup)
    ort = interleaved_latency(ort_fns, runs=runs, warmup=warmup)
    return {(runtime, name): t[name]["median"] * 1e3 for runtime, t in (("pt", pt), ("ort", ort)) for name in t}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=list(TABLES))
    parser.add_argument(
        "--tables", nargs="+", default=None, choices=list(SIZE_OF_TABLE), help="ratio tables (overrides --sizes)"
    )
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="threads of both runtimes (default: torch's)")
    parser.add_argument("--opset", type=int, default=20)
    parser.add_argument("--round-to", type=int, default=1, help="SNPConfig.round_to of the pruned models")
    parser.add_argument(
        "--onnx-attention", default="eager", choices=["eager", "sdpa"], help="attn_implementation of the export"
    )
    parser.add_argument(
        "--torch-attention", default="sdpa", choices=["eager", "sdpa"], help="attention of the PyTorch runs"
    )
    parser.add_argument("--output-dir", default=None, help="keep the ONNX models here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.runs < 30:
        print(f"note: --runs {args.runs} is below the 30 runs the README numbers use", file=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    tables = args.tables or [TABLES[size] for size in args.sizes]

    import onnxruntime
    from transformers import DeiTForImageClassification

    from optimum_snp import model_size_of
    from optimum_snp.exporters import export_onnx, onnx_session
    from optimum_snp.paper import deit_config

    print(f"# DeiT latency, original vs SNP-pruned: PyTorch and onnxruntime\n\nmachine: {machine_line()}")
    print(
        f"onnxruntime {onnxruntime.__version__} (CPU, {threads} intra-op threads), ONNX opset {args.opset}, "
        f"{args.onnx_attention} attention in ONNX, {args.torch_attention} in PyTorch; interleaved pairs, median of "
        f"{args.runs} runs after {args.warmup} warm-up rounds, 224x224\n"
    )
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="snp-onnx-bench-") as tmp:
        root = args.output_dir or tmp
        originals = {}
        for table in tables:
            size = SIZE_OF_TABLE[table]
            if size not in originals:
                torch.manual_seed(0)
                original = DeiTForImageClassification(deit_config(size)).eval()
                path = os.path.join(root, f"deit-{size}")
                result = export_onnx(original, path, opset=args.opset, overwrite=True)
                originals[size] = (original, onnx_session(path, num_threads=threads), result)
            original, original_session, original_result = originals[size]
            pruned = _prune(original, table, args.round_to)
            path = os.path.join(root, f"deit-{size}-{table}")
            result = export_onnx(
                pruned, path, opset=args.opset, attn_implementation=args.onnx_attention, overwrite=True
            )
            pruned_session = onnx_session(path, num_threads=threads)
            print(
                f"  exported {size} and {table} (max abs diff vs PyTorch {original_result.max_abs_diff:.1e}, "
                f"{result.max_abs_diff:.1e}; {time.perf_counter() - start:.0f} s)",
                file=sys.stderr,
            )
            original.set_attn_implementation(args.torch_attention)
            pruned.set_attn_implementation(args.torch_attention)
            gmacs = f"{model_size_of(original).gmacs:.2f} -> {model_size_of(pruned).gmacs:.2f}"
            for batch in args.batch_sizes:
                ms = measure((original, pruned), (original_session, pruned_session), batch, args.runs, args.warmup)
                rows.append(
                    dict(
                        size=size,
                        table=table + (f" round_to={args.round_to}" if args.round_to > 1 else ""),
                        batch=batch,
                        gmacs=gmacs,
                        ms=ms,
                    )
                )
                print(f"  measured {table} batch {batch} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)

    print("| DeiT | table | GMACs | batch | PyTorch ms | PyTorch speed-up | onnxruntime ms | onnxruntime speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        ms = row["ms"]
        cells = []
        for runtime in ("pt", "ort"):
            before, after = ms[(runtime, "original")], ms[(runtime, "pruned")]
            cells += [f"{before:.1f} -> {after:.1f}", f"{before / after:.2f}x"]
        print(f"| {row['size']} | {row['table']} | {row['gmacs']} | {row['batch']} | " + " | ".join(cells) + " |")
    print("\nonnxruntime over PyTorch (PyTorch median / onnxruntime median, same model and batch):")
    for row in rows:
        ms = row["ms"]
        print(
            f"  {row['size']:5s} b{row['batch']:<3d} original {ms[('pt', 'original')] / ms[('ort', 'original')]:.2f}x, "
            f"pruned {ms[('pt', 'pruned')] / ms[('ort', 'pruned')]:.2f}x"
        )
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
