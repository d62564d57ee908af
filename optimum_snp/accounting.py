"""Parameters and MACs of a ViT/DeiT (stock or SNP) computed from its config alone.

MACs are multiply-accumulates of every Linear, the patch-embedding convolution and the two attention
matmuls (Q K^T and A V) for one image; LayerNorm, softmax, GELU and bias additions are not counted (as in
the paper and in `torch.utils.flop_counter`, which reports 2 FLOPs per MAC).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .adapters import LayerDims, layer_dims_from_config


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


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, Iterable) else (value, value)


def _heads_and_pooler(config, architecture: str | None) -> tuple[int, bool]:
    """Number of classifier heads and whether a pooler exists, from the model class name."""
    architecture = architecture or (config.architectures or ["ForImageClassification"])[0]
    if architecture.endswith("WithTeacher"):
        return 2, False
    if architecture.endswith("ForImageClassification"):
        return 1, False
    if architecture.endswith("Model"):
        return 0, True
    raise ValueError(
        f"Cannot count the size of architecture {architecture!r}; expected a name ending in 'Model', "
        "'ForImageClassification' or 'ForImageClassificationWithTeacher'."
    )


def num_tokens(config, image_size: int | None = None) -> int:
    """Sequence length: patches plus the class (and, for DeiT, distillation) token."""
    height, width = _pair(image_size or config.image_size)
    ph, pw = _pair(config.patch_size)
    return (height // ph) * (width // pw) + (2 if config.model_type in ("deit", "snp_deit") else 1)


def model_size(
    config,
    architecture: str | None = None,
    image_size: int | None = None,
    hidden_size: int | None = None,
    layer_dims: list[LayerDims] | None = None,
) -> ModelSize:
    """Params and MACs per image of the model `architecture` (class name, default `config.architectures[0]`).

    Works for stock ViT/DeiT configs and SNP configs (per-layer dims). `image_size` overrides the config's;
    `hidden_size` and `layer_dims` give the size the model would have with those dims.
    """
    num_heads_out, has_pooler = _heads_and_pooler(config, architecture)
    d = hidden_size or config.hidden_size
    height, width = _pair(image_size or config.image_size)
    ph, pw = _pair(config.patch_size)
    patches = (height // ph) * (width // pw)
    tokens = num_tokens(config, image_size)
    special = tokens - patches
    patch_in = config.num_channels * ph * pw
    qkv_bias = 1 if config.qkv_bias else 0

    params = patch_in * d + d + special * d + (patches + special) * d  # conv, tokens, position embeddings
    macs = patches * patch_in * d
    dims: list[LayerDims] = layer_dims or layer_dims_from_config(config)
    for ld in dims:
        qk, v = ld.num_heads * ld.qk_head_dim, ld.num_heads * ld.v_head_dim
        m = ld.intermediate_size
        params += 2 * (d * qk + qkv_bias * qk) + d * v + qkv_bias * v + v * d + d  # q, k, v, o
        params += 4 * d + d * m + m + m * d + d  # 2 LayerNorms, fc1, fc2
        macs += tokens * (2 * d * qk + d * v + v * d + 2 * d * m)
        macs += ld.num_heads * tokens * tokens * (ld.qk_head_dim + ld.v_head_dim)
    params += 2 * d  # final LayerNorm
    if has_pooler:
        pooled = config.pooler_output_size
        params += d * pooled + pooled
        macs += d * pooled
    if config.num_labels > 0:
        params += num_heads_out * (d * config.num_labels + config.num_labels)
        macs += num_heads_out * d * config.num_labels
    return ModelSize(params=params, macs=macs)


def architecture_of(model) -> str:
    """The stock class name of a model (`SNP` prefix dropped), which decides its heads."""
    name = type(model).__name__
    return name[3:] if name.startswith("SNP") else name


def model_size_of(model, image_size: int | None = None) -> ModelSize:
    """`model_size` of a model instance (its class decides the heads)."""
    return model_size(model.config, architecture_of(model), image_size)
