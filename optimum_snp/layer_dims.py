"""Small value types: `LayerDims` (the dimensions of one transformer layer) and `ModelSize` (params and MACs). A leaf
module (it imports nothing of ours), so that ratios, plans, accounting and allocation do not depend on the model
families."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class LayerDims:
    """Dimensions of one transformer layer: heads, query/key dim per head, value dim per head, MLP width."""

    num_heads: int
    qk_head_dim: int
    v_head_dim: int
    intermediate_size: int

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def has_attention(self) -> bool:
        """False for layers without attention (its block pruned, or EfficientFormer's pooling blocks): dims 0."""
        return self.num_heads > 0

    @property
    def has_mlp(self) -> bool:
        """False for a layer whose MLP block is pruned (0 units)."""
        return self.intermediate_size > 0


@dataclass(frozen=True)
class ModelSize:
    params: int
    macs: int

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def mparams(self) -> float:
        return self.params / 1e6

    def __add__(self, other: ModelSize) -> ModelSize:
        return ModelSize(self.params + other.params, self.macs + other.macs)


def transformer_layer_size(dims: LayerDims, hidden_size: int, tokens: int, qkv_bias: bool = True) -> ModelSize:
    """Params and MACs of one pre-norm transformer layer (attention, MLP, two LayerNorms) on `tokens` tokens; a
    block with 0 dims (block pruning) is absent, its LayerNorm with it."""
    d, bias = hidden_size, int(qkv_bias)
    qk, v = dims.num_heads * dims.qk_head_dim, dims.num_heads * dims.v_head_dim
    m = dims.intermediate_size
    params = 0
    if dims.has_attention:
        params += 2 * (d * qk + bias * qk) + d * v + bias * v + v * d + d + 2 * d  # q, k, v, o, LayerNorm
    if dims.has_mlp:
        params += d * m + m + m * d + d + 2 * d  # fc1, fc2, LayerNorm
    macs = tokens * (2 * d * qk + d * v + v * d + 2 * d * m)
    macs += dims.num_heads * tokens * tokens * (dims.qk_head_dim + dims.v_head_dim)
    return ModelSize(params=params, macs=macs)


__all__ = ["LayerDims", "ModelSize", "transformer_layer_size"]
