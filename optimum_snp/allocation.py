"""Automatic allocation: per-layer query/key, value and MLP dims that reach a MACs target.

The paper hand-tuned its per-layer tables. Here every removable step -- one query/key dim from every kept head of
a layer, one value dim from every kept head, or one MLP unit -- gets a cost: the scores of the units it removes,
normalized by the mean score of that group over all layers (so layers are compared on one scale, and groups with
different units are comparable), divided by (MACs it saves) ** MACS_EXPONENT. Steps are taken cheapest first
until the model fits the target. The equal-count-per-head rule holds by construction.

Latency targets: with `layer_cost(idx, dims)` (e.g. `LatencyModel.layer_cost`, ms) and `fixed_cost`, a model's size
is `fixed_cost + sum of layer_cost` instead of its MACs, a step's saving is the cost it removes (measured with the
layer's other groups as they are when the step is taken) and the target is in the same unit. Without them the MACs
path is unchanged.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import replace

import torch

from .accounting import layer_size_in, model_size
from .layer_dims import LayerDims
from .plan import topk_sorted


# A step's cost is its normalized score divided by (MACs saved) ** MACS_EXPONENT. 1 (score per MAC) strips attention
# dims first and 0 ignores cost; benchmarks/ablation.py on the digits ViT measured 0.25 best (see README).
MACS_EXPONENT = 0.25


# round_to=None ("auto", the default): groups of at least AUTO_ROUND_MIN units are cut to multiples of AUTO_ROUND_TO,
# smaller groups unit by unit. Measured on this CPU (README, Latency): DeiT dims at multiples of 8 run 5-25% faster
# per MAC than the same MACs at odd sizes; a group under 64 units (e.g. a 24-dim head) would keep only a few levels.
AUTO_ROUND_TO = 8
AUTO_ROUND_MIN = 64


def resolve_round_to(dim: int, round_to: int | None) -> int:
    """The multiple a group of `dim` units is cut to: `round_to`, or with None the automatic rule above."""
    if round_to is None:
        return AUTO_ROUND_TO if dim >= AUTO_ROUND_MIN else 1
    return round_to


def kept_levels(dim: int, floor: int, round_to: int | None = 1) -> list[int]:
    """The sizes a group of `dim` units may be cut to, largest first: `dim` itself, then the multiples of `round_to`
    below it down to `floor` (at least one multiple is kept, so `round_to` > `dim` leaves the group whole)."""
    round_to = resolve_round_to(dim, round_to)
    levels = [dim]
    top = (dim - 1) // round_to * round_to
    levels += [m for m in range(top, 0, -round_to) if m >= max(floor, 1)]
    return levels


def round_kept(kept: int, dim: int, round_to: int | None = 1) -> int:
    """`kept` rounded to the nearest multiple of `round_to` (at least one multiple, at most `dim`)."""
    round_to = resolve_round_to(dim, round_to)
    if kept == 0 or round_to <= 1:  # (0: a block removed whole)
        return kept
    return min(dim, max(round_to, round(kept / round_to) * round_to))


def round_dims(dims: list[LayerDims], base: list[LayerDims], round_to: int | None = 1) -> list[LayerDims]:
    """Per-layer query/key, value and MLP dims rounded to multiples of `round_to` (heads are left as they are)."""
    return [
        LayerDims(
            d.num_heads,
            round_kept(d.qk_head_dim, b.qk_head_dim, round_to),
            round_kept(d.v_head_dim, b.v_head_dim, round_to),
            round_kept(d.intermediate_size, b.intermediate_size, round_to),
        )
        for d, b in zip(dims, base, strict=True)
    ]


FIELDS = (("qk", "qk_head_dim"), ("v", "v_head_dim"), ("mlp", "intermediate_size"))


def _floor_dims(base_dims: list[LayerDims], max_ratio: float, round_to: int | None) -> list[LayerDims]:
    """The smallest dims allocation may reach: at most `max_ratio` of every group removed (rounded)."""

    def floor(dim: int) -> int:
        return kept_levels(dim, dim - int(max_ratio * dim), round_to)[-1]

    return [
        LayerDims(b.num_heads, floor(b.qk_head_dim), floor(b.v_head_dim), floor(b.intermediate_size))
        for b in base_dims
    ]


LayerCost = Callable[[int, LayerDims], float]


def _total_cost(layer_cost: LayerCost, fixed_cost: float, dims: list[LayerDims]) -> float:
    return fixed_cost + sum(layer_cost(idx, d) for idx, d in enumerate(dims))


def _check_reachable(
    config,
    architecture,
    kept_hidden,
    base_dims,
    target_macs,
    *,
    max_ratio,
    round_to,
    layer_cost=None,
    fixed_cost=0.0,
    allow_block_removal=False,
) -> None:
    floor_dims = _floor_dims(base_dims, max_ratio, round_to)
    if allow_block_removal:  # every attention and MLP block may go: the floor is the model without them
        floor_dims = [LayerDims(0, 0, 0, 0) for _ in base_dims]
    if layer_cost is not None:
        floor = _total_cost(layer_cost, fixed_cost, floor_dims)
        if target_macs < floor:
            raise ValueError(
                f"Latency target of {target_macs:.4g} ms is below {floor:.4g} ms, the least this model reaches (as "
                f"estimated) removing at most {max_ratio:.0%} of every group; raise `target_latency`, increase "
                "`head_ratio`/`hidden_ratio`, or raise `max_allocated_ratio`."
            )
        return
    floor = model_size(config, architecture, hidden_size=kept_hidden, layer_dims=floor_dims).macs
    if target_macs < floor:
        raise ValueError(
            f"Target of {target_macs / 1e9:.4g} GMACs is below {floor / 1e9:.4g} GMACs, the least this model reaches "
            f"removing at most {max_ratio:.0%} of every group (after head/hidden pruning"
            + (f", dims rounded to multiples of {round_to or 'the automatic rule'}" if round_to != 1 else "")
            + "); raise the target, increase `head_ratio`/`hidden_ratio`, or raise `max_allocated_ratio`."
        )


def uniform_dims(
    config,
    architecture: str,
    kept_hidden: int,
    base_dims: list[LayerDims],
    target_macs: float,
    max_ratio: float = 0.9,
    round_to: int | None = 1,
    layer_cost: LayerCost | None = None,
    fixed_cost: float = 0.0,
) -> list[LayerDims]:
    """The same fraction of query/key dims, value dims and MLP units removed in every layer: the smallest fraction
    (to 1e-4, by bisection) whose model needs at most `target_macs` per image; then the MLP fraction (still the same
    in every layer) lowered as far as the target allows, since per-head dims move in coarse steps. With
    `layer_cost`, sizes and the target are in its unit (see the module docstring)."""
    _check_reachable(
        config,
        architecture,
        kept_hidden,
        base_dims,
        target_macs,
        max_ratio=max_ratio,
        round_to=round_to,
        layer_cost=layer_cost,
        fixed_cost=fixed_cost,
    )

    def keep(dim: int, ratio: float) -> int:
        if dim == 0:  # a group the layer does not have (no attention)
            return 0
        kept = max(1, dim - round(ratio * dim))
        return max(kept_levels(dim, dim - int(max_ratio * dim), round_to)[-1], round_kept(kept, dim, round_to))

    def dims_at(ratio: float, mlp_ratio: float | None = None) -> list[LayerDims]:
        mlp_ratio = ratio if mlp_ratio is None else mlp_ratio
        return [
            LayerDims(
                b.num_heads,
                keep(b.qk_head_dim, ratio),
                keep(b.v_head_dim, ratio),
                keep(b.intermediate_size, mlp_ratio),
            )
            for b in base_dims
        ]

    def macs(dims: list[LayerDims]) -> float:
        if layer_cost is not None:
            return _total_cost(layer_cost, fixed_cost, dims)
        return model_size(config, architecture, hidden_size=kept_hidden, layer_dims=dims).macs

    def smallest(fits, high: float) -> float:  # the smallest ratio in [0, high] for which fits(ratio), by bisection
        low = 0.0
        if fits(low):
            return low
        while high - low > 1e-4:
            mid = (low + high) / 2
            low, high = (low, mid) if fits(mid) else (mid, high)
        return high

    if macs(dims_at(max_ratio)) > target_macs:  # rounding kept the floor above the target: the best uniform can do
        return _floor_dims(base_dims, max_ratio, round_to)
    ratio = smallest(lambda r: macs(dims_at(r)) <= target_macs, max_ratio)
    # query/key and value dims move in coarse steps (one per head); fill what they overshoot with MLP units
    mlp_ratio = smallest(lambda r: macs(dims_at(ratio, r)) <= target_macs, ratio)
    return dims_at(ratio, mlp_ratio)


def allocate_dims(
    scores,
    config,
    architecture: str,
    kept_hidden: int,
    base_dims: list[LayerDims],
    target_macs: float,
    max_ratio: float = 0.9,
    round_to: int | None = 1,
    macs_exponent: float = MACS_EXPONENT,
    allow_block_removal: bool = False,
    layer_cost: LayerCost | None = None,
    fixed_cost: float = 0.0,
    loss_curves: dict[tuple[int, str], Callable[[int], float]] | None = None,
) -> list[LayerDims]:
    """Per-layer dims whose model needs at most `target_macs` per image.

    `base_dims` are the dims after head pruning (query/key, value and MLP still full); heads are chosen by
    their scores as the planner will choose them. With `round_to` > 1 a step removes down to the next multiple of
    `round_to` (its cost is the summed score of the removed units over the MACs they save, to the same exponent).
    With `allow_block_removal`, two more kinds of step (block pruning, beyond `max_ratio`): an MLP may lose its
    last units (the block disappears), and a layer may lose its whole attention block, at the cost of the summed
    scores of the query/key and value units it still has over the MACs they take.
    With `layer_cost(idx, dims)` and `fixed_cost` (e.g. a latency model's, in ms), sizes, savings and `target_macs`
    are in that unit; a step's saving is then taken with the layer's other groups as they are (re-checked when the
    step is popped).
    With `loss_curves` ((layer, group) -> the measured loss when that group alone keeps n units, see
    `sensitivity_curve`), a step's cost is the loss it adds per MAC saved (no score normalization, no exponent);
    groups without a curve keep their dims.
    Raises ValueError when the target cannot be reached.
    """
    d = kept_hidden
    _check_reachable(
        config,
        architecture,
        kept_hidden,
        base_dims,
        target_macs,
        max_ratio=max_ratio,
        round_to=round_to,
        layer_cost=layer_cost,
        fixed_cost=fixed_cost,
        allow_block_removal=allow_block_removal,
    )
    if layer_cost is not None:
        start = _total_cost(layer_cost, fixed_cost, base_dims)
    else:
        start = model_size(config, architecture, hidden_size=kept_hidden, layer_dims=base_dims).macs
    levels = {
        (idx, g): kept_levels(getattr(b, f), getattr(b, f) - int(max_ratio * getattr(b, f)), round_to)
        for idx, b in enumerate(base_dims)
        for g, f in FIELDS
    }
    if allow_block_removal:  # an MLP may go down to 0 units: its block is removed
        for idx, b in enumerate(base_dims):
            if b.has_mlp:
                levels[idx, "mlp"] = [*levels[idx, "mlp"], 0]
    if start <= target_macs:
        return list(base_dims)

    # ascending per-unit costs of every (layer, group)
    steps: dict[tuple[int, str], torch.Tensor] = {}
    means = {}
    for group in ("qk", "v", "mlp"):
        values = torch.cat([getattr(ls, group).flatten().float() for ls in scores.layers])
        means[group] = values.mean().clamp_min(1e-30)
    for idx, (ls, base) in enumerate(zip(scores.layers, base_dims, strict=True)):
        heads = topk_sorted(ls.heads, base.num_heads)
        for group in ("qk", "v"):
            per_head = getattr(ls, group)[heads].float() / means[group]  # (kept heads, dim)
            steps[idx, group] = per_head.sort(dim=1).values.sum(0)  # k-th unit removes the k-th weakest per head
        steps[idx, "mlp"] = (ls.mlp.float() / means["mlp"]).sort().values

    def unit_macs(idx: int, group: str) -> int:  # MACs of one unit of `group` (in every kept head) in layer `idx`
        base = base_dims[idx]
        smaller = replace(base, **{dict(FIELDS)[group]: getattr(base, dict(FIELDS)[group]) - 1})
        return layer_size_in(config, idx, base, d).macs - layer_size_in(config, idx, smaller, d).macs

    def step_macs(key, k: int) -> float:  # MACs (or layer_cost) saved by the k-th step of `key`
        if layer_cost is not None:  # with the layer's other groups as they are now
            idx, group = key
            dims = current(idx)
            field = dict(FIELDS)[group]
            before = replace(dims, **{field: levels[key][k]})
            after = replace(dims, **{field: levels[key][k + 1]})
            return max(layer_cost(idx, before) - layer_cost(idx, after), 1e-12)
        return (levels[key][k] - levels[key][k + 1]) * unit_macs(*key)

    def cost(key, k: int) -> float:
        # per elementary step (one unit, or one dim in every kept head): with round_to > 1 a step removes n of them
        # at once, and comparing sums would make coarse steps look n times dearer than fine ones
        full = levels[key][0]
        n = levels[key][k] - levels[key][k + 1]
        removed_units = steps[key][full - levels[key][k] : full - levels[key][k + 1]]
        if loss_curves is not None:
            curve = loss_curves[key]
            return max(curve(levels[key][k + 1]) - curve(levels[key][k]), 0.0) / step_macs(key, k)
        return float(removed_units.sum()) / n / (step_macs(key, k) / n) ** macs_exponent

    taken = dict.fromkeys(levels, 0)  # steps taken per key
    removed_attention: set[int] = set()

    def current(idx: int) -> LayerDims:
        base = base_dims[idx]
        if idx in removed_attention:
            return LayerDims(0, 0, 0, levels[idx, "mlp"][taken[idx, "mlp"]])
        return LayerDims(base.num_heads, *(levels[idx, g][taken[idx, g]] for g, _ in FIELDS))

    def attention_step(idx: int) -> tuple[int, float]:  # (MACs saved, cost) of removing layer idx's attention now
        dims = current(idx)
        without = replace(dims, num_heads=0, qk_head_dim=0, v_head_dim=0)
        if layer_cost is not None:
            saved = max(layer_cost(idx, dims) - layer_cost(idx, without), 1e-12)
        else:
            saved = layer_size_in(config, idx, dims, d).macs - layer_size_in(config, idx, without, d).macs
        # the units still there: the removed ones are the weakest (the first of the ascending per-unit costs)
        remaining = sum(
            float(steps[idx, g][levels[idx, g][0] - levels[idx, g][taken[idx, g]] :].sum()) for g in ("qk", "v")
        )
        n = max(dims.qk_head_dim + dims.v_head_dim, 1)  # elementary steps it replaces (as `cost`)
        return saved, remaining / n / (max(saved, 1 if layer_cost is None else 1e-12) / n) ** macs_exponent

    usable = [key for key in levels if len(levels[key]) > 1 and (loss_curves is None or key in loss_curves)]
    heap = [(cost(key, 0), key) for key in usable]
    if allow_block_removal:
        heap += [(attention_step(idx)[1], (idx, "attention")) for idx, b in enumerate(base_dims) if b.has_attention]
    heapq.heapify(heap)
    macs = start
    history = []
    while macs > target_macs and heap:
        entry_cost, key = heapq.heappop(heap)
        idx, group = key
        if idx in removed_attention and group in ("qk", "v"):
            continue  # the layer's attention is gone
        if group == "attention":
            saved, now = attention_step(idx)
            if now > entry_cost * (1 + 1e-9):  # stale (query/key or value steps were taken since): re-queue
                heapq.heappush(heap, (now, key))
                continue
            macs -= saved
            removed_attention.add(idx)
            continue
        if layer_cost is not None:
            now = cost(key, taken[key])
            if now > entry_cost * (1 + 1e-9):  # stale (the layer's other groups changed since): re-queue
                heapq.heappush(heap, (now, key))
                continue
        macs -= step_macs(key, taken[key])
        taken[key] += 1
        history.append(key)
        if taken[key] + 1 < len(levels[key]):
            heapq.heappush(heap, (cost(key, taken[key]), key))
    # the last (coarse) attention step may overshoot; give back the most recently removed MLP steps that still fit
    for key in reversed(history):
        if key[1] == "mlp" and macs + step_macs(key, taken[key] - 1) <= target_macs:
            macs += step_macs(key, taken[key] - 1)
            taken[key] -= 1
    return [current(idx) for idx in range(len(base_dims))]


def sensitivity_curve(points: dict[int, float], full: int) -> Callable[[int], float]:
    """Loss as a function of the kept units of one (layer, group), piecewise linear through the measured `points`
    (kept units -> loss) and 0 at `full`; below the fewest kept units measured, extrapolated along the last segment
    (never decreasing)."""
    xs = sorted({**points, full: 0.0}.items())

    def curve(kept: int) -> float:
        if kept >= xs[-1][0]:
            return xs[-1][1]
        lo = 0 if kept <= xs[0][0] else max(i for i, (x, _) in enumerate(xs) if x <= kept)
        (x0, y0), (x1, y1) = xs[lo], xs[lo + 1]
        slope = (y1 - y0) / (x1 - x0)
        return max(y0 + slope * (kept - x0), y0 if kept < x0 else 0.0)

    return curve
