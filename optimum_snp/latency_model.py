"""`LatencyModel`: the measured latency of one architecture's layers, for latency targets (`SNPConfig.target_latency`).

For the device the model is on, a batch size, a dtype and a torch thread count, the attention part (LayerNorm,
attention, residual add) and the MLP part (LayerNorm, MLP, residual add) of ONE layer of the pruned (SNP) family are
timed over a small grid of dims -- heads x query/key dim per head x value dim per head, and MLP widths -- built with
the family's own layer class at the model's hidden size and token count. Between grid points the latency is
interpolated (multilinear, on a grid made monotone non-decreasing in every dim, so the estimate is monotone in each
dim too). The fixed cost (embeddings, final norm, heads) is the whole unpruned model's measured latency minus its
layers' estimate. `estimate(layer_dims)` is the whole model's latency in ms.

Timings are medians of interleaved rounds (every grid point once per round, order alternating) under
`torch.inference_mode`. Measurements are cached as JSON in `$OPTIMUM_SNP_CACHE/latency/` (default
`~/.cache/optimum_snp/latency/`), keyed by the device name, dtype, batch size, torch threads, torch version, the
attention implementation and the architecture's dims; a build with the same key loads the file instead of measuring.

Supported: the ViT/DeiT family (stock and SNP models). Other families raise NotImplementedError.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .layer_dims import LayerDims


CACHE_VERSION = 1
# a timed call repeats the function until it takes at least this long (tiny layers run in microseconds)
MIN_CALL_SECONDS = 2e-3
# and a whole-model measurement (`measure_latency`) takes more rounds (up to MAX_RUNS) until they last this long:
# the median of ten fast calls moves by 10-20% on a busy CPU (DeiT-S at batch 1 on 2 cores)
MIN_MEASURE_SECONDS = 6.0
MAX_RUNS = 100


def cache_dir() -> str:
    """Where latency measurements are cached: `$OPTIMUM_SNP_CACHE/latency`, or `~/.cache/optimum_snp/latency`."""
    root = os.environ.get("OPTIMUM_SNP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "optimum_snp")
    return os.path.join(root, "latency")


def device_name(device: torch.device) -> str:
    """The CUDA device name, or the CPU model string (`/proc/cpuinfo`, else `platform.processor()`)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return device.type
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(
    fns: dict[str, Callable[[], object]],
    runs: int = 5,
    warmup: int = 1,
    device: torch.device | None = None,
    min_seconds: float = 0.0,
) -> dict[str, list[float]]:
    """Seconds per call of every function in each of `runs` interleaved rounds (order alternating), after `warmup`
    rounds (more rounds, up to MAX_RUNS, while they last less than `min_seconds` together); a call repeats a fast
    function until it lasts MIN_CALL_SECONDS. The one timing function of this module (tests replace it to count
    measurements); callers take medians (`statistics.median`) or per-round ratios."""
    device = device or torch.device("cpu")
    names = list(fns)
    repeats = {}
    round_seconds = 0.0
    for name in names:  # warm-up, and how many repeats make one timed call
        for _ in range(max(warmup, 1)):
            _sync(device)
            start = time.perf_counter()
            fns[name]()
            _sync(device)
            elapsed = time.perf_counter() - start
        repeats[name] = max(1, min(1000, int(MIN_CALL_SECONDS / max(elapsed, 1e-7)) + 1))
        round_seconds += elapsed * repeats[name]
    runs = max(runs, min(MAX_RUNS, int(min_seconds / max(round_seconds, 1e-7))))
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(runs):
        for name in names if r % 2 == 0 else names[::-1]:
            fn, n = fns[name], repeats[name]
            _sync(device)
            start = time.perf_counter()
            for _ in range(n):
                fn()
            _sync(device)
            times[name].append((time.perf_counter() - start) / n)
    return times


def _levels(dim: int, fractions: Sequence[float]) -> list[int]:
    """Grid points of a group of `dim` units: fractions of it, multiples of 8 for groups of 64+ units."""
    step = 8 if dim >= 64 else 1
    points = {max(step if dim >= step else 1, round(dim * f / step) * step) for f in fractions}
    return sorted({min(dim, p) for p in points} | {dim})


HEAD_FRACTIONS = (0.0, 0.5, 1.0)
DIM_FRACTIONS = (0.125, 0.25, 0.5, 0.75, 1.0)
MLP_FRACTIONS = (0.0625, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


def _interp_axis(points: list[int], x: float) -> tuple[int, int, float]:
    """(lower index, upper index, weight of the upper) of `x` on the sorted grid `points`, clamped at the ends; a grid
    point is returned as itself (weight 0)."""
    if x >= points[-1]:
        return len(points) - 1, len(points) - 1, 0.0
    if x <= points[0]:
        return 0, 0, 0.0
    lo = bisect.bisect_right(points, x) - 1
    if points[lo] == x:
        return lo, lo, 0.0
    return lo, lo + 1, (x - points[lo]) / (points[lo + 1] - points[lo])


def _lerp(a: float, b: float, w: float) -> float:
    return a + w * (b - a)  # exactly `a` at w=0 and where a == b


def _monotone(values: list) -> list:
    """`values` (nested lists, one axis per dim) made non-decreasing along every axis: along each axis in turn, the
    mean of the running maximum from below and the running minimum from above (both monotone; an outlier moves the
    mean half as far as a running maximum alone). Each pass keeps the monotonicity the previous ones gave (maxima,
    minima and means of sequences monotone along an axis stay monotone along it)."""
    t = torch.tensor(values, dtype=torch.float64)
    for axis in range(t.dim()):
        up = t.cummax(axis).values
        down = t.flip(axis).cummin(axis).values.flip(axis)
        t = (up + down) / 2
    return t.tolist()


@dataclass
class LatencyModel:
    """Measured latency of an architecture's layers (ms); see the module docstring. Build with `LatencyModel.build`."""

    key: dict
    heads: list[int]
    qk: list[int]
    v: list[int]
    mlp: list[int]
    attention_ms: list  # [heads][qk][v]
    mlp_ms: list[float]  # [mlp]
    fixed_ms: float
    model_ms: float  # the whole unpruned model, measured at build time
    build_seconds: float
    loaded: bool = False
    path: str | None = field(default=None, compare=False)

    # ---- estimates ----------------------------------------------------------------------------------------
    def attention(self, num_heads: int, qk_head_dim: int, v_head_dim: int) -> float:
        """ms of a layer's attention part (0 for a layer without attention)."""
        if num_heads <= 0:
            return 0.0
        hl, hh, hw = _interp_axis(self.heads, num_heads)
        ql, qh, qw = _interp_axis(self.qk, qk_head_dim)
        vl, vh, vw = _interp_axis(self.v, v_head_dim)
        grid = self.attention_ms

        def along_v(h: int, q: int) -> float:
            return _lerp(grid[h][q][vl], grid[h][q][vh], vw)

        def along_qv(h: int) -> float:
            return _lerp(along_v(h, ql), along_v(h, qh), qw)

        return _lerp(along_qv(hl), along_qv(hh), hw)

    def mlp_part(self, intermediate_size: int) -> float:
        """ms of a layer's MLP part (0 without MLP); below the smallest grid width, linear down to 0 at 0 units."""
        if intermediate_size <= 0:
            return 0.0
        if intermediate_size < self.mlp[0]:
            return self.mlp_ms[0] * intermediate_size / self.mlp[0]
        lo, hi, w = _interp_axis(self.mlp, intermediate_size)
        return _lerp(self.mlp_ms[lo], self.mlp_ms[hi], w)

    def layer(self, dims: LayerDims) -> float:
        """ms of one layer with `dims`."""
        return self.attention(dims.num_heads, dims.qk_head_dim, dims.v_head_dim) + self.mlp_part(
            dims.intermediate_size
        )

    def layer_cost(self, idx: int, dims: LayerDims) -> float:
        """`layer(dims)`, with the signature `allocation.allocate_dims(layer_cost=...)` takes."""
        return self.layer(dims)

    def estimate(self, layer_dims: Sequence[LayerDims]) -> float:
        """The whole model's latency in ms with these per-layer dims (fixed cost included)."""
        return self.fixed_ms + sum(self.layer(d) for d in layer_dims)

    # ---- building -----------------------------------------------------------------------------------------
    @staticmethod
    def key_for(model: nn.Module, batch_size: int = 1, hidden_size: int | None = None) -> dict:
        """The cache key of `model` measured at `batch_size` with the current torch threads."""
        from .adapters import get_adapter

        adapter = _check_family(model)
        param = next(model.parameters())
        dims = adapter.layer_dims()
        return {
            "version": CACHE_VERSION,
            "device": device_name(param.device),
            "device_type": param.device.type,
            "dtype": str(param.dtype).replace("torch.", ""),
            "batch_size": int(batch_size),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "architecture": type(get_adapter(model).model).__name__,
            "attention": model.config._attn_implementation,
            "hidden_size": int(hidden_size or adapter.hidden_size),
            "model_hidden_size": int(adapter.hidden_size),
            "tokens": int(adapter.num_tokens(model.config)),
            "num_layers": len(dims),
            "heads": max(d.num_heads for d in dims),
            "head_dim": max(max(d.qk_head_dim, d.v_head_dim) for d in dims),
            "mlp": max(d.intermediate_size for d in dims),
            "layer_dims": [list(d.to_dict().values()) for d in dims],
            "num_labels": int(getattr(model.config, "num_labels", 0)),
        }

    @classmethod
    def build(
        cls,
        model: nn.Module,
        batch_size: int = 1,
        num_threads: int | None = None,
        hidden_size: int | None = None,
        runs: int = 5,
        use_cache: bool = True,
        directory: str | None = None,
    ) -> LatencyModel:
        """The latency model of `model`'s architecture on its device and dtype, at `batch_size` and `num_threads`
        torch threads (default: the current setting), with layers `hidden_size` wide (default the model's). Loaded
        from the cache when a file with the same key exists, else measured (and saved)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}.")
        if num_threads is not None and (
            isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
        ):
            raise ValueError(f"`num_threads` must be None (current setting) or an int >= 1, got {num_threads!r}.")
        previous = torch.get_num_threads()
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        try:
            key = cls.key_for(model, batch_size, hidden_size)
            path = os.path.join(directory or cache_dir(), cls._file_name(key))
            if use_cache and os.path.isfile(path):
                with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                    loaded = cls.load(path)
                    if loaded.key == key:
                        return loaded
            built = cls._measure_model(model, key, runs)
            if use_cache:
                built.save(path)
            return built
        finally:
            torch.set_num_threads(previous)

    @staticmethod
    def _file_name(key: dict) -> str:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        return f"{key['architecture']}-b{key['batch_size']}-t{key['threads']}-{digest}.json"

    @classmethod
    def _measure_model(cls, model: nn.Module, key: dict, runs: int) -> LatencyModel:
        start = time.perf_counter()
        adapter = _check_family(model)
        param = next(model.parameters())
        device, dtype = param.device, param.dtype
        hidden = key["hidden_size"]
        heads = _levels(key["heads"], HEAD_FRACTIONS)
        qk = _levels(key["head_dim"], DIM_FRACTIONS)
        v = list(qk)
        mlp = _levels(key["mlp"], MLP_FRACTIONS)
        x = torch.randn(key["batch_size"], key["tokens"], hidden, device=device, dtype=dtype)

        def layer_fn(dims: LayerDims, width: int = hidden) -> Callable[[], object]:
            config = adapter.pruned_config(width, [dims] * adapter.num_layers)
            layer = _layer_class(model)(config, 0).to(device=device, dtype=dtype).eval()
            inputs = x if width == hidden else torch.randn(*x.shape[:2], width, device=device, dtype=dtype)
            return lambda: layer(inputs)

        fns: dict[str, Callable[[], object]] = {}
        for h in heads:
            for q in qk:
                for w in v:
                    fns[f"att/{h}/{q}/{w}"] = layer_fn(LayerDims(h, q, w, 0))
        for m in mlp:
            fns[f"mlp/{m}"] = layer_fn(LayerDims(0, 0, 0, m))
        model_dims = adapter.layer_dims()
        if hidden != adapter.hidden_size:  # the fixed cost needs the model's own layers at its own width
            for d in dict.fromkeys(model_dims):
                fns[f"ref/{d.num_heads}/{d.qk_head_dim}/{d.v_head_dim}/{d.intermediate_size}"] = layer_fn(
                    d, adapter.hidden_size
                )
        inputs = adapter.onnx_inputs(key["batch_size"])
        inputs = {k: t.to(device=device, dtype=dtype if t.is_floating_point() else None) for k, t in inputs.items()}
        fns["model"] = lambda: model(**inputs)
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                seconds = _measure(fns, runs=runs, device=device)
        finally:
            model.train(was_training)
        ms = {name: statistics.median(s) * 1e3 for name, s in seconds.items()}
        attention = _monotone([[[ms[f"att/{h}/{q}/{w}"] for w in v] for q in qk] for h in heads])
        mlp_ms = _monotone([ms[f"mlp/{m}"] for m in mlp])
        built = cls(key, heads, qk, v, mlp, attention, mlp_ms, 0.0, ms["model"], 0.0)
        if hidden != adapter.hidden_size:
            layers = sum(
                ms[f"ref/{d.num_heads}/{d.qk_head_dim}/{d.v_head_dim}/{d.intermediate_size}"] for d in model_dims
            )
        else:
            layers = sum(built.layer(d) for d in model_dims)
        built.fixed_ms = max(0.0, ms["model"] - layers)
        built.build_seconds = time.perf_counter() - start
        return built

    # ---- cache --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "heads": self.heads,
            "qk": self.qk,
            "v": self.v,
            "mlp": self.mlp,
            "attention_ms": self.attention_ms,
            "mlp_ms": self.mlp_ms,
            "fixed_ms": self.fixed_ms,
            "model_ms": self.model_ms,
            "build_seconds": self.build_seconds,
        }

    def save(self, path: str) -> str:
        """Writes the measurements as JSON (atomically: a temp file renamed)."""
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        os.replace(tmp, path)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str) -> LatencyModel:
        with open(path) as f:
            data = json.load(f)
        return cls(**data, loaded=True, path=path)


def _check_family(model: nn.Module):
    """The adapter of `model`, if its family has a latency model (ViT/DeiT)."""
    from .adapters import get_adapter
    from .adapters.vit import ViTAdapter

    adapter = get_adapter(model)
    if not isinstance(adapter, ViTAdapter):
        raise NotImplementedError(
            f"Latency models (SNPConfig.target_latency) are implemented for ViT/DeiT models; "
            f"{type(model).__name__} ({adapter.architecture}) is not supported yet. Use `target_macs_ratio` instead."
        )
    return adapter


def _layer_class(model: nn.Module) -> type:
    """The layer class of the model's pruned (SNP) family."""
    from .models.modeling_snp import SNPLayer

    return SNPLayer


def measure_latency(
    models: dict[str, nn.Module],
    batch_size: int = 1,
    runs: int = 10,
    warmup: int = 2,
    reference: str | None = None,
) -> dict[str, float]:
    """Median ms per batch of every model (same inputs, interleaved rounds, `torch.inference_mode`).

    With `reference` (one of the names), every other model's latency is the reference's median times the median of
    its per-round ratio to the reference: the two calls of a round run a few ms apart, so a drift of the machine's
    speed between rounds cancels in the ratio (DeiT-S pruned to 30%, batch 1, 2 shared cores, 40 rounds measured 8
    times: the spread of that ratio was 2.4% of its value, against 3.6% for the ratio of the medians;
    benchmarks/latency_noise.py)."""
    from .adapters import get_adapter

    if reference is not None and reference not in models:
        raise ValueError(f"reference={reference!r} is not one of the models measured ({sorted(models)}).")
    fns = {}
    device = torch.device("cpu")
    for name, model in models.items():
        param = next(model.parameters())
        device = param.device
        inputs = get_adapter(model).onnx_inputs(batch_size)
        inputs = {
            k: t.to(device=param.device, dtype=param.dtype if t.is_floating_point() else None)
            for k, t in inputs.items()
        }
        fns[name] = lambda m=model, i=inputs: m(**i)
    states = {name: m.training for name, m in models.items()}
    for m in models.values():
        m.eval()
    try:
        with torch.inference_mode():
            seconds = _measure(fns, runs=runs, warmup=warmup, device=device, min_seconds=MIN_MEASURE_SECONDS)
    finally:
        for name, m in models.items():
            m.train(states[name])
    medians = {name: statistics.median(ts) * 1e3 for name, ts in seconds.items()}
    if reference is None:
        return medians
    base = seconds[reference]
    return {
        name: medians[reference] * statistics.median(t / b for t, b in zip(ts, base, strict=True))
        if name != reference
        else medians[name]
        for name, ts in seconds.items()
    }


__all__ = ["LatencyModel", "cache_dir", "device_name", "measure_latency"]
