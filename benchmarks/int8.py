"""Float vs int8 (onnxruntime dynamic quantization), original vs SNP-pruned: latency, size and top-1, in one process.

Two models, each as four ONNX models written by `optimum_snp.exporters.export_onnx(..., quantize="dynamic")`
(float `model.onnx`, validated against PyTorch, and int8 `model_quantized.onnx`):

- the embedded digits ViT (`load_embedded_model`), and the same pruned to half its MACs with SNP
  (`SNPPruner(...).prune(SNPConfig(target_macs_ratio=0.5), calibration_dataset=digits train)`); top-1 on the digits
  test split (540 images) for all four, latency on test images;
- DeiT-S from its config (`optimum_snp.paper.deit_config("small")`, random weights) and the same pruned with the
  authors' `DeiT_s` ratio table (data-free: magnitude criterion, no reconstruction; speed depends only on the
  dims); latency only, at 224x224 on random images: top-1 of a random-weight model means nothing, so none is shown.

Latency: the four sessions of a model (same onnxruntime session options, CPU, the same number of intra-op threads)
interleaved via `interleaved_latency` (one call of each per round, order alternating) after warm-up, median of
`--runs`; speed-up = the float original's median over the variant's (pruning alone, int8 alone, both).

    python benchmarks/int8.py                         # both models, batch 1 and 16, 30 runs (about 4 min on 2 cores)
    python benchmarks/int8.py --models digits --runs 10
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
from latency import interleaved_latency, machine_line


VARIANTS = ("float original", "int8 original", "float pruned", "int8 pruned")


def _export_pair(original, pruned, root: str, name: str, **kwargs) -> dict:
    """{variant: (path, OnnxExportResult)} of the four ONNX models of one model."""
    from optimum_snp.exporters import export_onnx

    paths = {}
    for kind, model in (("original", original), ("pruned", pruned)):
        result = export_onnx(model, os.path.join(root, f"{name}-{kind}"), quantize="dynamic", overwrite=True, **kwargs)
        paths[f"float {kind}"] = (result.path, result)
        paths[f"int8 {kind}"] = (result.int8_path, result)
    return paths


def _measure(paths: dict, inputs: dict[int, np.ndarray], threads: int, runs: int, warmup: int) -> dict:
    """{batch: {variant: median ms}}: the four sessions interleaved, one batch size at a time."""
    from optimum_snp.exporters import onnx_session

    sessions = {variant: onnx_session(path, num_threads=threads) for variant, (path, _) in paths.items()}
    out = {}
    for batch, x in inputs.items():
        fns = {variant: (lambda s=s, x=x: s.run(None, {"pixel_values": x})) for variant, s in sessions.items()}
        timing = interleaved_latency(fns, runs=runs, warmup=warmup)
        out[batch] = {variant: timing[variant]["median"] * 1e3 for variant in VARIANTS}
    return out


def _digits(root: str, batch_sizes, threads: int, runs: int, warmup: int) -> dict:
    from optimum_snp import SNPConfig, SNPPruner, model_size_of
    from optimum_snp.embedded import digits_dataset, load_embedded_model

    data = digits_dataset()
    pruner = SNPPruner.from_pretrained(load_embedded_model(show_progress=False))
    pruned = pruner.prune(
        SNPConfig(target_macs_ratio=0.5), calibration_dataset=data["train"], show_progress=False
    ).eval()
    processor = pruner.image_processor
    paths = _export_pair(
        pruner.model, pruned, root, "digits", validation_dataset=data["test"], image_processor=processor
    )
    pixels = processor(list(data["test"]["image"]), return_tensors="np")["pixel_values"].astype(np.float32)
    inputs = {b: np.ascontiguousarray(np.resize(pixels, (b, *pixels.shape[1:]))) for b in batch_sizes}
    gmacs = {"original": model_size_of(pruner.model).gmacs, "pruned": model_size_of(pruned).gmacs}
    return dict(name="digits ViT", paths=paths, ms=_measure(paths, inputs, threads, runs, warmup), gmacs=gmacs)


def _deit(root: str, batch_sizes, threads: int, runs: int, warmup: int) -> dict:
    from transformers import DeiTForImageClassification

    from optimum_snp import SNPConfig, SNPPruner, model_size_of
    from optimum_snp.paper import deit_config

    torch.manual_seed(0)
    original = DeiTForImageClassification(deit_config("small")).eval()
    config = SNPConfig.from_ratio_table("DeiT_s", criterion="magnitude", reconstruct="none")  # data-free
    pruned = SNPPruner(original).prune(config, show_progress=False).eval()
    paths = _export_pair(original, pruned, root, "deit-s")
    generator = np.random.default_rng(0)
    inputs = {b: generator.standard_normal((b, 3, 224, 224)).astype(np.float32) for b in batch_sizes}
    gmacs = {"original": model_size_of(original).gmacs, "pruned": model_size_of(pruned).gmacs}
    return dict(name="DeiT-S (DeiT_s)", paths=paths, ms=_measure(paths, inputs, threads, runs, warmup), gmacs=gmacs)


def _print_table(rows: list[dict], batch_sizes) -> None:
    head = " | ".join(f"b{b} ms | b{b} speed-up" for b in batch_sizes)
    print(f"| model | variant | GMACs | file MB | top-1 | {head} |")
    print("|---|---|---|---|---|" + "---|---|" * len(batch_sizes))
    for row in rows:
        for variant in VARIANTS:
            path, result = row["paths"][variant]
            precision, kind = variant.split()
            top1 = result.float_top1 if precision == "float" else result.int8_top1
            size = result.float_bytes if precision == "float" else result.int8_bytes
            cells = []
            for b in batch_sizes:
                ms = row["ms"][b]
                cells += [f"{ms[variant]:.2f}", f"{ms['float original'] / ms[variant]:.2f}x"]
            print(
                f"| {row['name']} | {variant} | {row['gmacs'][kind]:.3f} | {size / 1e6:.2f} | "
                f"{'n/a' if top1 is None else f'{top1:.2%}'} | " + " | ".join(cells) + " |"
            )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["digits", "deit-s"], choices=["digits", "deit-s"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--runs", type=int, default=30, help="timed rounds per batch size (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: torch's)")
    parser.add_argument("--output-dir", default=None, help="keep the ONNX models here (default: a temporary folder)")
    parser.add_argument(
        "--no-reduce-range",
        action="store_true",
        help="8-bit weights (reduce_range=False) instead of the recipe's 7-bit ones, to compare",
    )
    args = parser.parse_args(argv)
    if args.runs < 30:
        print(f"note: --runs {args.runs} is below the 30 runs the README numbers use", file=sys.stderr)
    threads = args.threads or torch.get_num_threads()

    import onnxruntime

    from optimum_snp.exporters.onnx import QUANTIZE_OPTIONS

    if args.no_reduce_range:
        QUANTIZE_OPTIONS["reduce_range"] = False  # read by quantize_dynamic_onnx at each export

    print(f"# Float vs int8 (onnxruntime dynamic quantization), original vs SNP-pruned\n\nmachine: {machine_line()}")
    print(
        f"onnxruntime {onnxruntime.__version__} (CPU, {threads} intra-op threads, the same session options for all), "
        f"int8 = quantize_dynamic(weight_type=QInt8, {', '.join(f'{k}={v}' for k, v in QUANTIZE_OPTIONS.items())}); "
        f"interleaved, median of {args.runs} runs after {args.warmup} warm-up rounds\n"
    )
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="snp-int8-bench-") as tmp:
        root = args.output_dir or tmp
        for name in args.models:
            bench = _digits if name == "digits" else _deit
            rows.append(bench(root, args.batch_sizes, threads, args.runs, args.warmup))
            print(f"  measured {name} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)

    _print_table(rows, args.batch_sizes)
    print("\nspeed-up over the float original (pruning alone / int8 alone / both):")
    for row in rows:
        for b in args.batch_sizes:
            ms = row["ms"][b]
            base = ms["float original"]
            print(
                f"  {row['name']:16s} b{b:<3d} {base / ms['float pruned']:.2f}x / {base / ms['int8 original']:.2f}x / "
                f"{base / ms['int8 pruned']:.2f}x  (int8 on top of pruning: {ms['float pruned'] / ms['int8 pruned']:.2f}x)"
            )
    print("\nint8 vs float (export_onnx's check):")
    for row in rows:
        for kind in ("original", "pruned"):
            result = row["paths"][f"int8 {kind}"][1]
            on_dataset = result.int8_checked_on == "validation_dataset"
            print(
                f"  {row['name']:16s} {kind:8s} top-1 agreement {result.int8_agreement:.1%} on "
                f"{result.int8_num_samples} {'test images' if on_dataset else 'random example inputs'}; max relative "
                f"logit error {result.int8_max_rel_error:.1e}" + (" (on random example inputs)" if on_dataset else "")
            )
    if any(row["name"].startswith("DeiT") for row in rows):
        print(
            "  (DeiT-S has random weights: its logits are nearly tied, so its agreement on random inputs says little, "
            "and it has no top-1)"
        )
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
