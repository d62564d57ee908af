"""Containers for importance scores."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LayerScores:
    """Scores of one layer: heads (H,), query/key filters (H, d_qk), value filters (H, d_v), MLP units (m,).

    For the paper's redundancy-based value selection, `v_similarity` holds the mean cosine similarity of all value
    filters' outputs (H*d_v, H*d_v) and `v_contribution` their contribution norms; the planner then selects
    value filters greedily instead of by `v` alone.
    """

    heads: torch.Tensor
    qk: torch.Tensor
    v: torch.Tensor
    mlp: torch.Tensor
    v_similarity: torch.Tensor | None = None
    v_contribution: torch.Tensor | None = None


@dataclass
class GroupScores:
    """Scores of a whole model: hidden channels (d,) and one `LayerScores` per layer."""

    hidden: torch.Tensor
    layers: list[LayerScores]
