"""GPU latency of SNP-pruned DeiTs against the unpruned ones (PyTorch, SDPA attention), measured side by side.

DeiT-T/S/B from their configs (random weights: speed depends only on the dims), pruned with the authors' per-layer
tables (`DeiT_t`, `DeiT_s`, `DeiT_b`) and DeiT-B with half its heads removed and the rest allocated to 3.5 GMACs
(`SNPConfig(target_macs=3.5e9, head_ratio=0.5, allocation="scores")`), all with the data-free magnitude criterion
and no refit. The models are pruned on the CPU in float32 (no data, a second or two each), then moved to the device
and cast to `--dtype` (default: float16 on CUDA, float32 on the CPU, where float16 is slow).

Timing: the original and its variants are called interleaved (one call of each per round, order alternating; see
`latency.interleaved_latency`), after warm-up, under `torch.inference_mode`, at 224x224; on CUDA every timed call
ends with `torch.cuda.synchronize()`, so a time is the wall time of the whole forward pass on the GPU (kernel
launches included, which dominate at batch 1 for small models). Speed-up = original median / pruned median. SNP
attention zero-pads query/key and value head dims to equal multiples of 8 on CUDA so that the fused SDPA kernels
(flash, memory-efficient, cuDNN) take them (`modeling_snp._sdpa_pad`); the printed backend line says which fused
kernels accept the pruned models' padded shapes.
In inference on CUDA, SNP attention runs query, key and value as one projection whose
weights are zero-padded per head (`SNPAttention._fused_weights`), so the padding costs no copies.

`--unfused` adds the pruned models with that fused projection turned off (separate q/k/v products and padding
copies, as in training). `--graphs` adds timings of CUDA-graph replays (`torch.cuda.CUDAGraph`): the GPU's own time
without kernel-launch overhead, what `torch.compile(mode="reduce-overhead")` or TensorRT deployments see.

    python benchmarks/gpu_latency.py                                  # CUDA when there is one; every size, b1 and b64
    python benchmarks/gpu_latency.py --batch-sizes 1 64 256 --graphs --unfused
    python benchmarks/gpu_latency.py --device cpu --sizes tiny --batch-sizes 1 --runs 5
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch
from latency import interleaved_latency, machine_line


SIZES = {"tiny": ["DeiT_t"], "small": ["DeiT_s"], "base": ["DeiT_b", "heads @3.5G"]}
# The paper's GPU speed-ups (SNP_METHOD section 5): only DeiT-B + heads was timed on a GPU (RTX 3090, batch not
# stated); the CPU numbers (Xeon, .pt) are in benchmarks/deit_latency.py.
PAPER_GPU = {"heads @3.5G": "3.85x (RTX 3090)"}


def variant_config(name: str):
    from optimum_snp import SNPConfig

    if name == "heads @3.5G":
        return SNPConfig(
            target_macs=3.5e9, head_ratio=0.5, criterion="magnitude", reconstruct="none", allocation="scores"
        )
    return SNPConfig.from_ratio_table(name, criterion="magnitude", reconstruct="none")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available (torch.cuda.is_available() is False).")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def device_line(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (
            f"{torch.cuda.get_device_name(device)} (sm{props.major}{props.minor}, "
            f"{props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}"
        )
    return machine_line()


def fused_backends(model, x: torch.Tensor) -> str:
    """The SDPA backends that accept every attention call of `model` on `x` (CUDA only): each is tried alone."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    accepted = []
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
        try:
            with sdpa_kernel([backend]), torch.inference_mode():
                model(pixel_values=x)
            torch.cuda.synchronize()
            accepted.append(backend.name.lower())
        except RuntimeError:
            pass
    return ", ".join(accepted) or "none (math fallback)"


def timed(model, x: torch.Tensor, device: torch.device, fuse: bool = True):
    """A call of `model` on `x` for the timer; `fuse=False` turns SNP attention's fused query/key/value projection
    off for the call (to measure what it brings)."""
    from optimum_snp.models import modeling_snp

    fuse_rule = modeling_snp._fuse_qkv

    def call():
        if not fuse:
            modeling_snp._fuse_qkv = lambda device_type: False
        try:
            model(pixel_values=x)
        finally:
            modeling_snp._fuse_qkv = fuse_rule
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return call


def graphed(model, x: torch.Tensor, device: torch.device):
    """A replay of `model`'s forward on `x` captured in a CUDA graph (no launch overhead: the GPU's own time)."""
    static = x.clone()
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):
            model(pixel_values=static)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        model(pixel_values=static)

    def call():
        graph.replay()
        torch.cuda.synchronize(device)

    return call


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small", "base"], choices=list(SIZES))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--graphs", action="store_true", help="CUDA: also time CUDA-graph replays (no launch cost)")
    parser.add_argument(
        "--unfused", action="store_true", help="also time the pruned models with the fused q/k/v projection off"
    )
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "float16", "bfloat16"],
        help="auto: float16 on CUDA, float32 on the CPU",
    )
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)

    from transformers import DeiTForImageClassification

    from optimum_snp import SNPPruner, model_size_of
    from optimum_snp.paper import deit_config

    print(f"# DeiT latency on {device.type.upper()}, original vs SNP-pruned (PyTorch, SDPA)\n")
    print(f"device: {device_line(device)}")
    print(
        f"{str(dtype).removeprefix('torch.')}, interleaved, median of {args.runs} runs after {args.warmup} warm-up "
        f"rounds, torch.inference_mode, 224x224{', synchronized' if device.type == 'cuda' else ''}\n"
    )
    rows, backends = [], []
    start = time.perf_counter()
    for size in args.sizes:
        torch.manual_seed(0)
        original = DeiTForImageClassification(deit_config(size)).eval()
        pruned = {
            name: SNPPruner(original).prune(variant_config(name), show_progress=False).eval() for name in SIZES[size]
        }
        models = {"original": original, **pruned}
        for model in models.values():
            model.to(device, dtype)
            model.set_attn_implementation("sdpa")
        if device.type == "cuda":
            x = torch.randn(1, 3, 224, 224, device=device, dtype=dtype)
            backends += [f"  {size} {name}: {fused_backends(model, x)}" for name, model in models.items()]
        gmacs = {name: model_size_of(model).gmacs for name, model in models.items()}
        modes = ["launches"] + (["CUDA graph"] if args.graphs and device.type == "cuda" else [])
        for batch in args.batch_sizes:
            x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
            for mode in modes:
                if mode == "launches":
                    fns = {name: timed(model, x, device) for name, model in models.items()}
                    if args.unfused:
                        fns.update(
                            {
                                f"{name} (unfused)": timed(copy.deepcopy(model), x, device, fuse=False)
                                for name, model in pruned.items()
                            }
                        )
                else:
                    fns = {name: graphed(model, x, device) for name, model in models.items()}
                with torch.inference_mode():
                    timing = interleaved_latency(fns, runs=args.runs, warmup=args.warmup)
                base = timing["original"]["median"]
                for name in fns:
                    if name == "original":
                        continue
                    rows.append(
                        dict(
                            size=size,
                            name=name,
                            batch=batch,
                            mode=mode,
                            gmacs=f"{gmacs['original']:.2f} -> {gmacs[name.removesuffix(' (unfused)')]:.2f}",
                            original_ms=base * 1e3,
                            pruned_ms=timing[name]["median"] * 1e3,
                            ratio=base / timing[name]["median"],
                            paper=PAPER_GPU.get(name, ""),
                        )
                    )
                del fns
            print(f"  measured {size} batch {batch} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
        del original, pruned, models
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print("| DeiT | pruned with | GMACs | batch | timed | original (ms) | pruned (ms) | speed-up | paper (GPU) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']} | {r['name']} | {r['gmacs']} | {r['batch']} | {r['mode']} | {r['original_ms']:.2f} | "
            f"{r['pruned_ms']:.2f} | {r['ratio']:.2f}x | {r['paper']} |"
        )
    if backends:
        print("\nfused SDPA kernels that accept each model (each backend tried alone, batch 1):")
        print("\n".join(backends))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
