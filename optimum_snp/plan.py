"""The pruning plan: the kept indices of every group, a plain value to inspect, save, and apply again.

A plan refers to the model it was made for: head indices are that model's heads, query/key and value
indices are positions inside a head, MLP and hidden indices are that model's units/channels. Kept indices
are stored sorted, so the pruned model keeps the original order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

from .layer_dims import LayerDims
from .scoring.snp import other_head_cos


@dataclass
class LayerPlan:
    """Kept indices of one layer.

    heads: kept heads of the source layer.
    qk: for every kept head (same order as `heads`), its kept query/key dims; the same count in every head.
    v: for every kept head, its kept value dims; the same count in every head.
    mlp: kept MLP units.
    """

    heads: list[int]
    qk: list[list[int]]
    v: list[list[int]]
    mlp: list[int]

    def dims(self) -> LayerDims:
        if not self.heads:  # a layer without attention
            return LayerDims(0, 0, 0, len(self.mlp))
        return LayerDims(len(self.heads), len(self.qk[0]), len(self.v[0]), len(self.mlp))

    def qk_rows(self, source: LayerDims) -> list[int]:
        """Flat row indices of q_proj / k_proj that this layer keeps."""
        return [h * source.qk_head_dim + i for h, dims in zip(self.heads, self.qk, strict=True) for i in dims]

    def v_rows(self, source: LayerDims) -> list[int]:
        """Flat row indices of v_proj (= input columns of o_proj) that this layer keeps."""
        return [h * source.v_head_dim + i for h, dims in zip(self.heads, self.v, strict=True) for i in dims]


@dataclass
class PruningPlan:
    """Kept indices of every group of a model: hidden channels (model-wide) and one `LayerPlan` per layer."""

    hidden: list[int]
    layers: list[LayerPlan]
    metadata: dict = field(default_factory=dict)

    # ---- construction -----------------------------------------------------------------------------------
    @classmethod
    def identity(cls, hidden_size: int, layer_dims: list[LayerDims]) -> PruningPlan:
        """The plan that keeps everything."""
        return cls(
            hidden=list(range(hidden_size)),
            layers=[
                LayerPlan(
                    heads=list(range(d.num_heads)),
                    qk=[list(range(d.qk_head_dim)) for _ in range(d.num_heads)],
                    v=[list(range(d.v_head_dim)) for _ in range(d.num_heads)],
                    mlp=list(range(d.intermediate_size)),
                )
                for d in layer_dims
            ],
        )

    def to_dict(self) -> dict:
        return {
            "hidden": list(self.hidden),
            "layers": [{"heads": lp.heads, "qk": lp.qk, "v": lp.v, "mlp": lp.mlp} for lp in self.layers],
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: dict) -> PruningPlan:
        try:
            layers = [
                LayerPlan(
                    heads=[int(h) for h in lp["heads"]],
                    qk=[[int(i) for i in head] for head in lp["qk"]],
                    v=[[int(i) for i in head] for head in lp["v"]],
                    mlp=[int(j) for j in lp["mlp"]],
                )
                for lp in data["layers"]
            ]
            return cls(hidden=[int(c) for c in data["hidden"]], layers=layers, metadata=dict(data.get("metadata", {})))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                "A pruning plan must be a dict with 'hidden' (list of ints) and 'layers' (list of dicts with "
                f"'heads', 'qk', 'v', 'mlp'); could not read it: {err!r}"
            ) from err

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PruningPlan:
        with open(path) as f:
            return cls.from_dict(json.load(f))

    # ---- inspection -------------------------------------------------------------------------------------
    def layer_dims(self) -> list[LayerDims]:
        return [lp.dims() for lp in self.layers]

    def removed_blocks(self, source_dims: list[LayerDims]) -> list[tuple[int, str]]:
        """(layer, 'attention' or 'mlp') of every block of the source model (`source_dims`) that the plan removes
        whole (block pruning)."""
        removed = []
        for idx, (lp, d) in enumerate(zip(self.layers, source_dims, strict=True)):
            if d.has_attention and not lp.heads:
                removed.append((idx, "attention"))
            if d.has_mlp and not lp.mlp:
                removed.append((idx, "mlp"))
        return removed

    def summary(self) -> list[dict]:
        """Kept dims per layer, e.g. for a report."""
        return [{"layer": i, **d.to_dict()} for i, d in enumerate(self.layer_dims())]

    # ---- validation -------------------------------------------------------------------------------------
    def validate(self, hidden_size: int, layer_dims: list[LayerDims]) -> None:
        """Raises ValueError naming the first layer/group whose kept indices do not fit the source model."""
        if len(self.layers) != len(layer_dims):
            raise ValueError(
                f"The plan has {len(self.layers)} layers but the model has {len(layer_dims)}; a plan can only be "
                "applied to the model it was made for."
            )
        _check_indices(self.hidden, hidden_size, "hidden channels", "the model")
        for idx, (lp, d) in enumerate(zip(self.layers, layer_dims, strict=True)):
            where = f"layer {idx}"
            if lp.mlp or d.has_mlp:  # an empty list removes the MLP block (block pruning)
                _check_indices(lp.mlp, d.intermediate_size, "MLP units", where, allow_empty=True)
            if not d.has_attention:
                if lp.heads or lp.qk or lp.v:
                    raise ValueError(
                        f"The plan keeps heads or query/key/value filters in {where}, which has no attention; give "
                        "empty 'heads', 'qk' and 'v' lists there."
                    )
                continue
            if not lp.heads:  # the attention block removed (block pruning)
                if lp.qk or lp.v:
                    raise ValueError(
                        f"The plan keeps no head in {where} (its attention block removed) but lists query/key or value "
                        "filters there; give empty 'qk' and 'v' lists, or keep at least one head."
                    )
                continue
            _check_indices(lp.heads, d.num_heads, "heads", where)
            for group, per_head, size in (("qk", lp.qk, d.qk_head_dim), ("v", lp.v, d.v_head_dim)):
                name = "query/key" if group == "qk" else "value"
                if len(per_head) != len(lp.heads):
                    raise ValueError(
                        f"The plan lists {len(per_head)} {group} index lists in {where} but keeps {len(lp.heads)} "
                        "heads; give one list per kept head."
                    )
                for head, kept in zip(lp.heads, per_head, strict=True):
                    _check_indices(kept, size, f"{name} filters", f"head {head} of {where}")
                counts = {len(kept) for kept in per_head}
                if len(counts) > 1:
                    raise ValueError(
                        f"The plan keeps different numbers of {name} filters in the heads of {where} "
                        f"({sorted(counts)}); every head of a layer must keep the same number."
                    )

    def normalized(self) -> PruningPlan:
        """The same plan with every index list sorted (the pruned model keeps the original order)."""
        layers = []
        for lp in self.layers:
            pairs = sorted(zip(lp.heads, lp.qk, lp.v, strict=True), key=lambda t: t[0])
            layers.append(
                LayerPlan(
                    heads=[h for h, _, _ in pairs],
                    qk=[sorted(q) for _, q, _ in pairs],
                    v=[sorted(v) for _, _, v in pairs],
                    mlp=sorted(lp.mlp),
                )
            )
        return PruningPlan(hidden=sorted(self.hidden), layers=layers, metadata=dict(self.metadata))


def _check_indices(indices: list[int], size: int, what: str, where: str, allow_empty: bool = False) -> None:
    if len(indices) == 0:
        if allow_empty:
            return
        raise ValueError(
            f"The plan would remove every one of the {size} {what} of {where}; keep at least one (lower the "
            "pruning ratio)."
        )
    if len(set(indices)) != len(indices):
        raise ValueError(f"The plan lists some {what} of {where} twice: {sorted(indices)}.")
    bad = [i for i in indices if not 0 <= i < size]
    if bad:
        raise ValueError(f"The plan keeps {what} {bad} of {where}, which has only {size} (valid: 0..{size - 1}).")


def topk_sorted(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k largest scores, ascending; ties broken by the lower index (deterministic)."""
    order = torch.argsort(-scores.double(), stable=True)
    return sorted(order[:k].tolist())


def greedy_redundancy_keep(
    contribution: torch.Tensor, abs_cos: torch.Tensor, heads: list[int], keep: int
) -> list[list[int]]:
    """The paper's greedy value selection inside the kept `heads`: repeatedly remove the filter with the lowest
    contribution * (1 - rho) among heads that still have more than `keep` filters, then recompute rho without the
    removed filters (a filter whose twin was removed is no longer redundant)."""
    num_heads, dim = contribution.shape
    removed = torch.zeros(num_heads * dim, dtype=torch.bool)
    for h in range(num_heads):
        if h not in heads:
            removed[h * dim : (h + 1) * dim] = True
    counts = {h: dim for h in heads}
    head_of = torch.arange(num_heads * dim) // dim
    cos = other_head_cos(abs_cos, dim)
    while any(c > keep for c in counts.values()):
        rho = cos.masked_fill(removed[None, :], 0.0).max(1).values
        score = (contribution.flatten() * (1 - rho)).masked_fill(removed, float("inf"))
        full = torch.tensor([counts.get(int(h), 0) <= keep for h in head_of])
        score = score.masked_fill(full, float("inf"))
        victim = int(torch.argmin(score))
        removed[victim] = True
        counts[victim // dim] -= 1
    return [sorted(i for i in range(dim) if not removed[h * dim + i]) for h in sorted(heads)]


def plan_from_scores(scores, hidden_size: int, layer_dims: list[LayerDims], ratios) -> PruningPlan:
    """Keeps the highest-scoring units of every group in the numbers that `ratios` (`PruningRatios`) leave."""
    kept_hidden, kept_dims = ratios.kept_dims(hidden_size, layer_dims)
    return plan_from_kept_dims(scores, kept_hidden, kept_dims)


def plan_from_kept_dims(scores, kept_hidden: int, kept_dims: list[LayerDims]) -> PruningPlan:
    """Keeps the highest-scoring units of every group, `kept_hidden` channels and `kept_dims` per layer.

    Heads are chosen first; query/key and value filters are then chosen inside every kept head, the same number
    in each head of a layer (value filters greedily when the scores carry a redundancy matrix).
    """
    layers = []
    for layer_scores, kept in zip(scores.layers, kept_dims, strict=True):
        heads = topk_sorted(layer_scores.heads, kept.num_heads)
        if layer_scores.v_similarity is not None:
            v = greedy_redundancy_keep(
                layer_scores.v_contribution, layer_scores.v_similarity.abs(), heads, kept.v_head_dim
            )
        else:
            v = [topk_sorted(layer_scores.v[h], kept.v_head_dim) for h in heads]
        layers.append(
            LayerPlan(
                heads=heads,
                qk=[topk_sorted(layer_scores.qk[h], kept.qk_head_dim) for h in heads],
                v=v,
                mlp=topk_sorted(layer_scores.mlp, kept.intermediate_size),
            )
        )
    return PruningPlan(hidden=topk_sorted(scores.hidden, kept_hidden), layers=layers)


def build_plan(model, ratios, scores=None) -> PruningPlan:
    """Plan for `model` from `ratios` (`PruningRatios`, or a ratio table name/path/dict) and `scores`
    (`GroupScores`; default: weight magnitude)."""
    from .adapters import get_adapter
    from .ratios import PruningRatios, load_ratio_table
    from .scoring import magnitude_scores

    adapter = get_adapter(model)
    if not isinstance(ratios, PruningRatios):
        ratios = load_ratio_table(ratios, num_layers=adapter.num_layers)
    scores = scores if scores is not None else magnitude_scores(model)
    plan = plan_from_scores(scores, adapter.hidden_size, adapter.layer_dims(), ratios)
    plan.metadata["ratios"] = ratios.to_dict()
    return plan
