"""Containers for importance scores."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LayerScores:
    """Scores of one layer: heads (H,), query/key filters (H, d_qk), value filters (H, d_v), MLP units (m,)."""

    heads: torch.Tensor
    qk: torch.Tensor
    v: torch.Tensor
    mlp: torch.Tensor


@dataclass
class GroupScores:
    """Scores of a whole model: hidden channels (d,) and one `LayerScores` per layer."""

    hidden: torch.Tensor
    layers: list[LayerScores]
