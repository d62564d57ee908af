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


__all__ = ["LayerDims", "ModelSize"]
