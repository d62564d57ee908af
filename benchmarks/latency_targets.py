"""Latency targets (issue 12, part 1): `SNPConfig(target_latency=...)` against the latency then measured.

Latency targets are noisy on a shared CPU (the pruner's own measurements and the re-measurement drift apart); run it
on an idle machine.

1. DeiT-S (random weights, `criterion="magnitude", reconstruct="none", allocation="scores"`) pruned to 50% and 30%
   of its measured latency at batch 1 and 16: the target (ms), the pruned model's latency measured afterwards
   (interleaved with the unpruned one over `--runs` rounds: the unpruned model's median times the median per-round
   ratio), the error, the allocation rounds the pruner took and the latency model's build time (0 when it came from
   the cache: `--fresh` measures it anew).
2. The embedded digits ViT at equal measured latency: dims allocated by the latency model (`target_latency`) against
   dims allocated by MACs (`target_macs_ratio` searched so that the pruned model's measured latency matches), both
   with the default SNP pipeline (validated allocation, least-squares refit), top-1 on the digits test split zero-shot
   and after fine-tuning (`optimum_snp.finetune.finetune`, soft distillation, `--epochs`).

    python benchmarks/latency_targets.py [--runs 40] [--threads 2] [--fresh] [--skip-deit] [--skip-digits]
        [--keep 0.3 --head-ratio 0.5 --block-pruning]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
from latency import interleaved_latency, machine_line


def _measure_pair(original, pruned, batch: int, runs: int) -> tuple[float, float]:
    param = next(original.parameters())
    size = original.config.image_size
    x = torch.randn(batch, original.config.num_channels, size, size, device=param.device, dtype=param.dtype)

    def call(model):
        model(pixel_values=x)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)

    fns = {"original": lambda: call(original), "pruned": lambda: call(pruned)}
    with torch.inference_mode():
        t = interleaved_latency(fns, runs=runs, warmup=2)
    # the pruned model on the original's scale, by the median per-round ratio (as the pruner measures it)
    return t["original"]["median"] * 1e3, t["original"]["median"] * t["pruned"]["paired_ratio"] * 1e3


def deit(args) -> None:
    from transformers import DeiTForImageClassification

    from optimum_snp import SNPConfig, SNPPruner, model_size_of
    from optimum_snp.paper import deit_config

    torch.manual_seed(0)
    original = DeiTForImageClassification(deit_config("small")).eval()
    original.set_attn_implementation("sdpa")
    base = model_size_of(original).macs
    original.to(args.device, args.dtype)  # the pruner measures and prunes on the model's device and dtype
    calibration = None
    if args.pipeline == "default":  # every default: validated allocation and query/key, least-squares refit
        from optimum_snp.embedded import digits_dataset

        calibration = digits_dataset()["train"].select(range(128))  # 64 calibration + 64 held-out images
    setting = "magnitude, no refit, allocation 'scores'" if calibration is None else "the default pipeline"
    print(
        f"## DeiT-S on {args.device.upper()} ({str(args.dtype).removeprefix('torch.')}; random weights, {setting}"
        f"{', calibrated on digits images' if calibration is not None else ''}"
        f"{f', head_ratio={args.head_ratio}' if args.head_ratio else ''}"
        f"{', block pruning allowed' if args.block_pruning else ''}), SDPA, 224x224\n"
    )
    print(
        "| batch | target | target ms | measured ms (pruner) | measured ms (re-measured) | error | rounds | "
        "GMACs kept | latency model build s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in args.batch_sizes:
        for keep in args.keep:
            pruner = SNPPruner(original)
            fast = dict(criterion="magnitude", reconstruct="none", allocation="scores") if calibration is None else {}
            config = SNPConfig(
                target_latency=keep,
                latency_batch_size=batch,
                head_ratio=args.head_ratio,
                block_pruning=args.block_pruning,
                **fast,
            )
            start = time.perf_counter()
            try:
                pruned = pruner.prune(config, calibration_dataset=calibration, show_progress=False).eval()
            except ValueError as error:  # below what the model reaches (as estimated) with these options
                print(f"| {batch} | {keep:.0%} | - | - | - | not reachable: {error} | - | - | - |", flush=True)
                continue
            seconds = time.perf_counter() - start
            report = pruner.report["latency"]
            original_ms, pruned_ms = _measure_pair(original, pruned, batch, args.runs)
            target_ms = keep * original_ms
            print(
                f"| {batch} | {keep:.0%} | {target_ms:.1f} | {report['measured_ms']:.1f} (target "
                f"{report['target_ms']:.1f}) | {pruned_ms:.1f} (unpruned {original_ms:.1f}) | "
                f"{pruned_ms / target_ms - 1:+.1%} | {report['rounds']} | {model_size_of(pruned).macs / base:.1%} | "
                f"{report['build_seconds']:.1f}{' (cached)' if report['loaded_from_cache'] else ''} |",
                flush=True,
            )
            print(
                f"  rounds: {[(r['internal_target_ms'], r['estimate_ms'], r['measured_ms']) for r in report['round_details']]}"
                f" (internal target, estimate, measured ms); prune() took {seconds:.0f} s",
                file=sys.stderr,
            )
            print(
                f"  settle: {[(r['internal_target_ms'], r['error']) for r in report['settle_rounds']]} (internal "
                "target, error of the returned allocation: as chosen, then re-allocated if it missed by > 2.5%); "
                f"rounds measured {report['round_details'][0]['allocation']}, chosen "
                f"{pruner.report['allocation']['chosen']}",
                file=sys.stderr,
            )


def digits(args) -> None:
    from optimum_snp import SNPConfig, SNPPruner, model_size_of
    from optimum_snp.embedded import digits_dataset, load_embedded_model
    from optimum_snp.evaluation import evaluate_accuracy
    from optimum_snp.finetune import finetune

    data = digits_dataset()
    pruner = SNPPruner.from_pretrained(load_embedded_model(args.embedded_dir, show_progress=False))
    original = pruner.model.eval()
    base = model_size_of(original).macs
    batch = args.digits_batch_size

    def top1(model) -> float:
        return evaluate_accuracy(model, data["test"], pruner.image_processor, show_progress=False)["top1"]

    def prune(**kw):
        model = pruner.prune(SNPConfig(**kw), calibration_dataset=data["train"], show_progress=False).eval()
        return model, pruner.report

    print(f"\n## digits ViT at equal measured latency (batch {batch}), original top-1 {top1(original):.2%}\n")
    print(
        "| latency kept | allocation | GMACs kept | measured ms (unpruned) | top-1 zero-shot | top-1 fine-tuned "
        f"({args.epochs:g} ep) |"
    )
    print("|---|---|---|---|---|---|")
    for keep in args.digits_keep:
        by_latency, report = prune(target_latency=keep, latency_batch_size=batch)
        unpruned_ms, latency_ms = _measure_pair(original, by_latency, batch, args.runs)
        target_ms = keep * unpruned_ms
        # the MACs target whose pruned model runs as fast: start at the latency model's MACs, then secant-like steps
        ratio = model_size_of(by_latency).macs / base
        tried = []
        for _ in range(args.macs_search):
            by_macs, _ = prune(target_macs_ratio=min(ratio, 1.0))
            original_ms, macs_ms = _measure_pair(original, by_macs, batch, args.runs)
            macs_ms *= unpruned_ms / original_ms  # on the scale of the first measurement
            tried.append((abs(macs_ms - latency_ms), ratio, macs_ms, by_macs))
            if abs(macs_ms / latency_ms - 1) <= 0.03:
                break
            ratio *= latency_ms / macs_ms
        _, ratio, macs_ms, by_macs = min(tried, key=lambda t: t[0])
        rows = [
            (f"latency model ({report['latency']['rounds']} rounds)", by_latency, latency_ms),
            (f"MACs (target_macs_ratio={ratio:.3f})", by_macs, macs_ms),
        ]
        for name, model, ms in rows:
            zero_shot = top1(model)
            with tempfile.TemporaryDirectory() as scratch:
                finetune(
                    model,
                    original,
                    data["train"],
                    pruner.image_processor,
                    epochs=args.epochs,
                    output_dir=os.path.join(scratch, "ft"),
                    show_progress=False,
                )
            print(
                f"| {keep:.0%} ({target_ms:.2f} ms) | {name} | {model_size_of(model).macs / base:.1%} | "
                f"{ms:.2f} ({unpruned_ms:.2f}) | {zero_shot:.2%} | {top1(model):.2%} |",
                flush=True,
            )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=40, help="interleaved rounds of the re-measurements")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--keep", type=float, nargs="+", default=[0.5, 0.3], help="DeiT-S: latency fractions kept")
    parser.add_argument("--digits-keep", type=float, nargs="+", default=[0.5])
    parser.add_argument("--digits-batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--macs-search", type=int, default=3, help="MACs targets tried to match the latency")
    parser.add_argument("--fresh", action="store_true", help="measure the latency models anew (a fresh cache)")
    parser.add_argument("--head-ratio", type=float, default=0.0, help="DeiT-S: heads removed in every layer")
    parser.add_argument(
        "--block-pruning", action="store_true", help="DeiT-S: the allocation may remove whole attention / MLP blocks"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="DeiT-S part: where it runs")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="DeiT-S part: model dtype"
    )
    parser.add_argument(
        "--pipeline",
        default="fast",
        choices=["fast", "default"],
        help="DeiT-S part: magnitude, no refit, allocation 'scores' (fast), or every default with 128 digits images "
        "(64 calibration + 64 held out for the validated choice)",
    )
    parser.add_argument("--skip-deit", action="store_true")
    parser.add_argument("--skip-digits", action="store_true")
    args = parser.parse_args(argv)
    args.embedded_dir = None
    args.dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fresh:  # latency models measured anew; the embedded digits model stays where it was cached
        from optimum_snp.embedded import embedded_model_dir

        args.embedded_dir = embedded_model_dir()
        os.environ["OPTIMUM_SNP_CACHE"] = tempfile.mkdtemp(prefix="snp-latency-")
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"# Latency targets\n\nmachine: {machine_line()}; DeiT-S part on {device}\n")
    start = time.perf_counter()
    if not args.skip_deit:
        deit(args)
    if not args.skip_digits:
        digits(args)
    print(f"\nTotal: {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
