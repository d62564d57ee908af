"""Pruning speed: time of `SNPPruner.prune()` over the time of one plain forward pass on the same images.

DeiT-Base built from its config (random weights, 224x224, 1000 classes), 64 calibration images (scikit-learn
digits, upscaled by the derived image processor), measured in one process: forward, prune, forward again (the
ratio uses the mean of the two forward timings). Also the peak resident memory after each phase.

    python benchmarks/prune_speed.py [--size base] [--images 64] [--target-macs-ratio 0.36 | --ratio-table DeiT_b]
        [--reconstruct least_squares|bias|none] [--allocation validated|scores|uniform] [--retain-freed-memory]
        [--sensitivity-candidate auto|on|off]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time

import torch


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def digits_images(n: int):
    from optimum_snp.embedded import digits_dataset

    return digits_dataset()["train"].select(range(n))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="base", choices=["tiny", "small", "base"])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--target-macs-ratio", type=float, default=0.36, help="0.36 ~ the paper's DeiT-B 6.4 GMACs")
    parser.add_argument("--ratio-table", default=None, help="e.g. DeiT_b: the authors' per-layer ratios instead")
    parser.add_argument("--reconstruct", default="least_squares", choices=["least_squares", "bias", "none"])
    parser.add_argument("--allocation", default="validated", choices=["validated", "scores", "uniform"])
    parser.add_argument("--criterion", default="snp")
    parser.add_argument(
        "--sensitivity-candidate",
        default="auto",
        choices=["auto", "on", "off"],
        help="SNPConfig(sensitivity_candidate=None / True / False): the measured loss curves among the validated "
        "allocation's candidates (auto: the architecture's default, on for ViT/DeiT)",
    )
    parser.add_argument("--device", default="cpu", help="e.g. cuda: the model (and pruning) on that device")
    parser.add_argument(
        "--retain-freed-memory",
        action="store_true",
        help="optimum_snp.retain_freed_memory() first (what snp-prune does): forward and prune() both run with it",
    )
    parser.add_argument(
        "--replay-ab",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="then time the least-squares refit of the chosen plan with and without the attention replay "
        "(ROUNDS interleaved pairs)",
    )
    args = parser.parse_args(argv)
    if args.retain_freed_memory:
        from optimum_snp import retain_freed_memory

        print(f"retain_freed_memory(): {retain_freed_memory()}")

    from transformers import DeiTForImageClassification

    from optimum_snp import SNPConfig, SNPPruner, model_size_of
    from optimum_snp.calibration import calibration_batches
    from optimum_snp.cli import parse_criterion
    from optimum_snp.paper import deit_config

    torch.manual_seed(0)
    model = DeiTForImageClassification(deit_config(args.size)).eval().to(args.device)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    data = digits_images(args.images)
    pruner = SNPPruner.from_pretrained(model)
    batches = calibration_batches(
        data, pruner.image_processor, num_samples=args.images, batch_size=args.batch_size, show_progress=False
    )

    def forward() -> float:
        sync()
        start = time.perf_counter()
        with torch.inference_mode():
            for pixel_values in batches:
                model(pixel_values=pixel_values.to(args.device))
        sync()
        return time.perf_counter() - start

    forward()  # warm-up (allocator, kernels), not timed
    t_forward_1 = forward()
    rss_forward = peak_rss_gib()
    common = dict(
        criterion=parse_criterion(args.criterion),
        num_calibration_samples=args.images,
        batch_size=args.batch_size,
        reconstruct=args.reconstruct,
        allocation=args.allocation,
        sensitivity_candidate={"auto": None, "on": True, "off": False}[args.sensitivity_candidate],
    )
    if args.ratio_table:
        config = SNPConfig.from_ratio_table(args.ratio_table, **common)
    else:
        config = SNPConfig(target_macs_ratio=args.target_macs_ratio, **common)
    sync()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    pruned = pruner.prune(config, calibration_dataset=data, show_progress=False)
    sync()
    t_prune = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    rss_prune = peak_rss_gib()
    t_forward_2 = forward()
    t_forward = (t_forward_1 + t_forward_2) / 2

    size_before, size_after = model_size_of(model), model_size_of(pruned)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {device}, torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}, python {sys.version.split()[0]}"
    )
    print(
        f"DeiT-{args.size}: {size_before.gmacs:.2f} -> {size_after.gmacs:.2f} GMACs "
        f"({size_after.macs / size_before.macs:.1%} kept), criterion {pruner.report['criteria']}, "
        + (f"ratio table {args.ratio_table}" if args.ratio_table else f"allocation {args.allocation}")
        + f" (chosen: {pruner.report['allocation']['chosen']}), reconstruct {args.reconstruct}"
        + f", sensitivity_candidate {args.sensitivity_candidate}"
    )
    print(
        "| images | forward (s) | prune() (s) | of which scoring (s) | of which reconstruction (s) | prune / forward "
        "| peak RSS after forward | peak RSS after prune |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.images} | {t_forward:.2f} ({t_forward_1:.2f}, {t_forward_2:.2f}) | {t_prune:.2f} | "
        f"{pruner.report['seconds']['scoring']:.2f} | {pruner.report['seconds']['reconstruction']:.2f} | "
        f"{t_prune / t_forward:.2f} | {rss_forward:.2f} GiB | "
        f"{rss_prune:.2f} GiB |"
    )
    # glibc returns large freed buffers to the OS: each new one is page-faulted in again (system time)
    print(
        f"during prune(): {after.ru_minflt - usage.ru_minflt} minor page faults, "
        f"{after.ru_stime - usage.ru_stime:.1f} s system / {after.ru_utime - usage.ru_utime:.1f} s user CPU time; "
        f"retain_freed_memory: {args.retain_freed_memory}"
    )
    if args.device.startswith("cuda"):
        print(f"peak GPU memory allocated: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    if args.replay_ab:
        replay_ab(model, pruner.plan, batches, args.replay_ab, sync)
    return 0


def replay_ab(model, plan, batches, rounds: int, sync) -> None:
    """The refit of `plan` (no target cache: each run also passes the unpruned model once) with the attention replayed
    from o_proj's recorded inputs (the default) and computed again (`attention_only_through_o_proj = False`),
    interleaved in one process; the same weights either way (checked)."""
    from optimum_snp import apply_plan, get_adapter
    from optimum_snp.reconstruction import reconstruct

    adapter_class = type(get_adapter(model))
    times = {True: [], False: []}
    states = {}
    for _ in range(rounds):
        for replay in (True, False):
            adapter_class.attention_only_through_o_proj = replay
            pruned = apply_plan(model, plan)
            sync()
            start = time.perf_counter()
            reconstruct(model, pruned, plan, batches, show_progress=False)
            sync()
            times[replay].append(time.perf_counter() - start)
            states[replay] = pruned.state_dict()
    adapter_class.attention_only_through_o_proj = True
    same = all(torch.equal(t, states[False][k]) for k, t in states[True].items())
    print(
        f"refit of the chosen plan, {rounds} interleaved rounds: replayed attention "
        f"{', '.join(f'{t:.2f}' for t in times[True])} s; computed again {', '.join(f'{t:.2f}' for t in times[False])}"
        f" s; ratio of the medians {sorted(times[True])[rounds // 2] / sorted(times[False])[rounds // 2]:.3f}; "
        f"weights bit-identical: {same}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
