"""Side-by-side latency measurement shared by the benchmarks.

`interleaved_latency({"original": fn_a, "pruned": fn_b}, runs=30, warmup=5)` calls every function once per round,
in an order that alternates between rounds, so slow drifts of the machine (frequency, other load) hit all of them
alike; it returns the median seconds per call of each (and the interquartile range), and the median of each one's
per-round ratio to the first function (`"paired_ratio"`): a drift of the machine between rounds cancels in it. The
ratios printed by the benchmarks are ratios of the medians unless they say "paired", measured in one process, in one
run.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable


def interleaved_latency(
    fns: dict[str, Callable[[], object]], runs: int = 30, warmup: int = 5
) -> dict[str, dict[str, float]]:
    """{name: {"median": s, "q1": s, "q3": s, "runs": n, "paired_ratio": r}} of `runs` interleaved timed calls after
    `warmup` each; `paired_ratio`: the median over rounds of the call's time over the first function's."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}.")
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(runs):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    out = {}
    first = times[names[0]]
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        out[name] = {
            "median": statistics.median(ts),
            "q1": q[0],
            "q3": q[2],
            "runs": len(ts),
            "paired_ratio": statistics.median(t / f for t, f in zip(ts, first, strict=True)),
        }
    return out


def machine_line() -> str:
    """One line naming the machine the numbers come from (CPU model, cores, torch threads, versions)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}"
    )


__all__ = ["interleaved_latency", "machine_line"]
