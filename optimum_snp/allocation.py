"""Automatic allocation: per-layer query/key, value and MLP dims that reach a MACs target.

The paper hand-tuned its per-layer tables. Here every removable step -- one query/key dim from every kept head of
a layer, one value dim from every kept head, or one MLP unit -- gets a cost: the scores of the units it removes,
normalized by the mean score of that group over all layers (so layers are compared on one scale, and groups with
different units are comparable), divided by (MACs it saves) ** MACS_EXPONENT. Steps are taken cheapest first
until the model fits the target. The equal-count-per-head rule holds by construction.
"""

from __future__ import annotations

import heapq

import torch

from .accounting import model_size, num_tokens
from .adapters import LayerDims
from .plan import topk_sorted


# A step's cost is its normalized score divided by (MACs saved) ** MACS_EXPONENT. 1 (score per MAC) strips attention
# dims first and 0 ignores cost; benchmarks/ablation.py on the digits ViT measured 0.25 best (see README).
MACS_EXPONENT = 0.25


def allocate_dims(
    scores,
    config,
    architecture: str,
    kept_hidden: int,
    base_dims: list[LayerDims],
    target_macs: float,
    max_ratio: float = 0.9,
) -> list[LayerDims]:
    """Per-layer dims whose model needs at most `target_macs` per image.

    `base_dims` are the dims after head pruning (query/key, value and MLP still full); heads are chosen by
    their scores as the planner will choose them. Raises ValueError when the target cannot be reached.
    """
    tokens = num_tokens(config)
    d = kept_hidden
    start = model_size(config, architecture, hidden_size=kept_hidden, layer_dims=base_dims).macs
    floor_dims = [
        LayerDims(
            b.num_heads,
            max(1, b.qk_head_dim - int(max_ratio * b.qk_head_dim)),
            max(1, b.v_head_dim - int(max_ratio * b.v_head_dim)),
            max(1, b.intermediate_size - int(max_ratio * b.intermediate_size)),
        )
        for b in base_dims
    ]
    floor = model_size(config, architecture, hidden_size=kept_hidden, layer_dims=floor_dims).macs
    if target_macs < floor:
        raise ValueError(
            f"Target of {target_macs / 1e9:.4g} GMACs is below {floor / 1e9:.4g} GMACs, the least this model reaches "
            f"removing at most {max_ratio:.0%} of every group (after head/hidden pruning); raise the target, "
            "increase `head_ratio`/`hidden_ratio`, or raise `max_allocated_ratio`."
        )
    if start <= target_macs:
        return list(base_dims)

    # ascending per-step costs of every (layer, group)
    steps: dict[tuple[int, str], torch.Tensor] = {}
    means = {}
    for group in ("qk", "v", "mlp"):
        values = torch.cat([getattr(ls, group).flatten().float() for ls in scores.layers])
        means[group] = values.mean().clamp_min(1e-30)
    for idx, (ls, base) in enumerate(zip(scores.layers, base_dims, strict=True)):
        heads = topk_sorted(ls.heads, base.num_heads)
        for group in ("qk", "v"):
            per_head = getattr(ls, group)[heads].float() / means[group]  # (kept heads, dim)
            steps[idx, group] = per_head.sort(dim=1).values.sum(0)  # k-th step removes the k-th weakest per head
        steps[idx, "mlp"] = (ls.mlp.float() / means["mlp"]).sort().values

    def step_macs(idx: int, group: str) -> int:
        heads = base_dims[idx].num_heads
        return heads * (2 * tokens * d + tokens * tokens) if group in ("qk", "v") else 2 * tokens * d

    limit = {
        (idx, g): (getattr(base, f) - getattr(fl, f))
        for idx, (base, fl) in enumerate(zip(base_dims, floor_dims, strict=True))
        for g, f in (("qk", "qk_head_dim"), ("v", "v_head_dim"), ("mlp", "intermediate_size"))
    }
    removed = dict.fromkeys(limit, 0)

    def cost(key, k: int) -> float:
        return float(steps[key][k]) / step_macs(*key) ** MACS_EXPONENT

    heap = [(cost(key, 0), key) for key in limit if limit[key] > 0]
    heapq.heapify(heap)
    macs = start
    history = []
    while macs > target_macs and heap:
        _, key = heapq.heappop(heap)
        macs -= step_macs(*key)
        removed[key] += 1
        history.append(key)
        if removed[key] < limit[key]:
            heapq.heappush(heap, (cost(key, removed[key]), key))
    # the last (coarse) attention step may overshoot; give back the most recently removed MLP units that still fit
    for key in reversed(history):
        if key[1] == "mlp" and macs + step_macs(*key) <= target_macs:
            macs += step_macs(*key)
            removed[key] -= 1
    return [
        LayerDims(
            b.num_heads,
            b.qk_head_dim - removed[idx, "qk"],
            b.v_head_dim - removed[idx, "v"],
            b.intermediate_size - removed[idx, "mlp"],
        )
        for idx, b in enumerate(base_dims)
    ]
