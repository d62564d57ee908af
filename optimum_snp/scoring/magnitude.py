"""Data-free baselines: weight L2 norm of every coupled group, and random scores."""

from __future__ import annotations

import torch
from torch import nn

from ..adapters import get_adapter
from .base import GroupScores, LayerScores


def _sq_norms(tensor: torch.Tensor, axis: int) -> torch.Tensor:
    """Squared L2 norm of every slice of `tensor` along `axis`."""
    t = tensor.detach().float().movedim(axis, 0)
    return t.reshape(t.shape[0], -1).pow(2).sum(1)


@torch.no_grad()
def magnitude_scores(model: nn.Module) -> GroupScores:
    """Weight L2 norm of each unit over all tensors coupled to it (SNP_METHOD section 2)."""
    adapter = get_adapter(model)
    params = dict(model.named_parameters())
    layers = []
    for idx, dims in enumerate(adapter.layer_dims()):
        group = {}
        for name, members in adapter.layer_groups(idx).items():
            # weights only: a group's buffers (e.g. BatchNorm running statistics) are sliced, not scored
            group[name] = sum(_sq_norms(params[p], axis) for p, axis in members if p in params)
        group.setdefault("mlp", torch.zeros(0))  # (an MLP block removed by block pruning)
        if not dims.has_attention:
            empty = torch.zeros(0, 0)
            layers.append(LayerScores(heads=torch.zeros(0), qk=empty, v=empty, mlp=group["mlp"].sqrt()))
            continue
        qk = group["qk"].view(dims.num_heads, dims.qk_head_dim)
        v = group["v"].view(dims.num_heads, dims.v_head_dim)
        heads = qk.sum(1) + v.sum(1)
        layers.append(LayerScores(heads=heads.sqrt(), qk=qk.sqrt(), v=v.sqrt(), mlp=group["mlp"].sqrt()))
    hidden = sum(
        (_sq_norms(params[p], axis).cpu() for p, axis in adapter.hidden_group()), torch.zeros(adapter.hidden_size)
    )  # architectures that keep their hidden channels have no hidden group: all zero, never cut
    return GroupScores(hidden=hidden.sqrt(), layers=layers)


def random_scores(model: nn.Module, seed: int = 0) -> GroupScores:
    """Uniform random scores (a baseline), reproducible from `seed`."""
    adapter = get_adapter(model)
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=gen)

    layers = [
        LayerScores(
            heads=rand(d.num_heads),
            qk=rand(d.num_heads, d.qk_head_dim),
            v=rand(d.num_heads, d.v_head_dim),
            mlp=rand(d.intermediate_size),
        )
        for d in adapter.layer_dims()
    ]
    return GroupScores(hidden=rand(adapter.hidden_size), layers=layers)
