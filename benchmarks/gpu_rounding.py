"""Which multiple should kept dims be rounded to on a GPU? (issue 12, part 2: "on GPUs tensor cores want larger
multiples -- measure when a GPU is lent").

Two measurements, side by side in one process, float16 (`--dtype`), SDPA:

1. MLP widths (micro): `fc1 -> GELU -> fc2` of DeiT-S (hidden 384) and DeiT-B (hidden 768) at batch `--batch` x 197
   tokens, for every width from a quarter of the full one to the full one (step 1), median of CUDA-event timings.
   Summary per multiple m: the mean of time(d) / trend(d) over the widths d that are multiples of m, where trend is
   the least-squares line through all widths. Below 1: widths of that multiple run faster than their size says.
2. Whole DeiT-S / DeiT-B pruned to 50% of the MACs (allocation 'scores', magnitude, no refit) and with the authors'
   tables, with kept dims rounded to multiples of 1, 8 (today's default), 16, 32 and 64, plus uniform dims at 50%:
   latency interleaved with the unpruned model, batch 1 and `--batch`, and ms per GMAC.

    python benchmarks/gpu_rounding.py [--batch 64] [--runs 30] [--csv micro.csv]
    python benchmarks/gpu_rounding.py --device cpu --sizes small --batch 16 --skip-micro --runs 5   # a CPU check
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from deit_latency import uniform_ratio_for
from gpu_latency import device_line, resolve_device, resolve_dtype
from latency import interleaved_latency


MULTIPLES = (1, 8, 16, 32, 64)
HIDDEN = {"small": (384, 1536), "base": (768, 3072)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ms(fn, device: torch.device, reps: int) -> float:
    """Median time of `fn` in ms (CUDA events on CUDA, perf_counter elsewhere), after two warm-up calls."""
    for _ in range(2):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def micro(sizes, batch: int, device, dtype, reps: int, csv_path: str | None) -> None:
    print("## MLP widths (fc1 -> GELU -> fc2), time relative to the linear trend, by multiple of the width\n")
    print(f"batch {batch} x 197 tokens, median of {reps} CUDA-event timings per width\n")
    print("| model | widths | " + " | ".join(f"x{m}" for m in MULTIPLES) + " | worst width / trend | best |")
    print("|---|---|" + "---|" * len(MULTIPLES) + "---|---|")
    lines = ["model,width,ms"]
    for size in sizes:
        hidden, full = HIDDEN[size]
        x = torch.randn(batch * 197, hidden, device=device, dtype=dtype)
        fc1_full = torch.nn.Linear(hidden, full, device=device, dtype=dtype)
        fc2_full = torch.nn.Linear(full, hidden, device=device, dtype=dtype)
        widths = list(range(full // 4, full + 1))
        ms = []
        with torch.inference_mode():
            for width in widths:
                # slices copied to contiguous weights, as the pruned model holds them
                w1, b1 = fc1_full.weight[:width].contiguous(), fc1_full.bias[:width].contiguous()
                w2 = fc2_full.weight[:, :width].contiguous()
                ms.append(
                    _time_ms(
                        lambda w1=w1, b1=b1, w2=w2, x=x, b2=fc2_full.bias: torch.nn.functional.linear(
                            torch.nn.functional.gelu(torch.nn.functional.linear(x, w1, b1)), w2, b2
                        ),
                        device,
                        reps,
                    )
                )
        lines += [f"{size},{w},{t:.5f}" for w, t in zip(widths, ms, strict=True)]
        t = torch.tensor(ms, dtype=torch.float64)
        d = torch.tensor(widths, dtype=torch.float64)
        design = torch.stack([d, torch.ones_like(d)], 1)
        coef = torch.linalg.lstsq(design, t[:, None]).solution
        relative = t / (design @ coef)[:, 0]
        cells = []
        for m in MULTIPLES:
            picked = [r for w, r in zip(widths, relative.tolist(), strict=True) if w % m == 0]
            cells.append(f"{statistics.mean(picked):.3f}")
        worst, best = int(relative.argmax()), int(relative.argmin())
        print(
            f"| DeiT-{size[0].upper()} MLP ({hidden}) | {widths[0]}-{widths[-1]} | "
            + " | ".join(cells)
            + f" | {widths[worst]}: {relative[worst]:.2f} | {widths[best]}: {relative[best]:.2f} |",
            flush=True,
        )
    if csv_path:
        with open(csv_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"\nper-width timings: {csv_path}")


def whole_models(sizes, batches, device, dtype, runs: int, warmup: int) -> None:
    from transformers import DeiTForImageClassification

    from optimum_snp import SNPConfig, SNPPruner, model_size_of
    from optimum_snp.paper import deit_config

    table = {"small": "DeiT_s", "base": "DeiT_b"}
    print("\n## Whole models: kept dims rounded to multiples of m (speed-up over the unpruned model)\n")
    print(f"interleaved, median of {runs} runs after {warmup} warm-up rounds, synchronized, 224x224\n")
    print(
        "| DeiT | variant | GMACs | " + " | ".join(f"b{b} ms | b{b} speed-up | b{b} ms/GMAC" for b in batches) + " |"
    )
    print("|---|---|---|" + "---|---|---|" * len(batches))
    magnitude = dict(criterion="magnitude", reconstruct="none")
    for size in sizes:
        torch.manual_seed(0)
        original = DeiTForImageClassification(deit_config(size)).eval()
        configs = {f"auto 50%, x{m}": SNPConfig(target_macs_ratio=0.5, allocation="scores", round_to=m, **magnitude)
                   for m in MULTIPLES}  # fmt: skip
        r = uniform_ratio_for(original, 0.5 * model_size_of(original).macs)
        configs["uniform 50%, exact"] = SNPConfig(qk_ratio=r, v_ratio=r, mlp_ratio=r, round_to=1, **magnitude)
        for m in MULTIPLES:
            configs[f"{table[size]} table, x{m}"] = SNPConfig.from_ratio_table(table[size], round_to=m, **magnitude)
        models = {"original": original}
        models.update({name: SNPPruner(original).prune(c, show_progress=False).eval() for name, c in configs.items()})
        gmacs = {name: model_size_of(m).gmacs for name, m in models.items()}
        for model in models.values():
            model.to(device, dtype).set_attn_implementation("sdpa")
        timings = {}
        for batch in batches:
            x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)

            def call(model, x=x):
                model(pixel_values=x)
                _sync(device)

            fns = {name: (lambda m=m: call(m)) for name, m in models.items()}
            with torch.inference_mode():
                timings[batch] = interleaved_latency(fns, runs=runs, warmup=warmup)
        for name in models:
            cells = []
            for batch in batches:
                t = timings[batch]
                ms = t[name]["median"] * 1e3
                cells.append(f"{ms:.2f} | {t['original']['median'] / t[name]['median']:.2f}x | {ms / gmacs[name]:.3f}")
            print(f"| {size} | {name} | {gmacs[name]:.2f} | " + " | ".join(cells) + " |", flush=True)
        del models, original
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--sizes", nargs="+", default=["small", "base"], choices=list(HIDDEN))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--micro-reps", type=int, default=10)
    parser.add_argument("--csv", default=None, help="write the per-width MLP timings here")
    parser.add_argument("--skip-micro", action="store_true")
    parser.add_argument("--skip-models", action="store_true")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    start = time.perf_counter()
    print(f"# Rounding of kept dims on {device.type.upper()}\n\ndevice: {device_line(device)}, {dtype}\n")
    if not args.skip_micro:
        micro(args.sizes, args.batch, device, dtype, args.micro_reps, args.csv)
    if not args.skip_models:
        whole_models(args.sizes, sorted({1, args.batch}), device, dtype, args.runs, args.warmup)
    print(f"\ntotal {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
