# Copyright 2026 The optimum-snp authors. Licensed under the Apache License, Version 2.0.
"""Configurations of SNP-pruned ViT / DeiT models.

A pruned model is a smaller *dense* model whose layers may all differ: every layer has its own number of
heads, query/key head dim, value head dim and MLP width. These configs extend the stock ViT/DeiT configs with
one explicit list per quantity, so that every module reads its shapes from the config (transformers' way) and
the modeling file carries no pruning logic.

This file only uses sibling imports so that it can be copied next to a checkpoint for `trust_remote_code=True`.
"""

from dataclasses import dataclass

from huggingface_hub.dataclasses import strict
from transformers import DeiTConfig, ViTConfig


_PER_LAYER_FIELDS = ("num_heads_per_layer", "qk_head_dims", "v_head_dims", "intermediate_sizes")


def _fill_and_check_per_layer(config) -> None:
    """Fills unset per-layer fields from the uniform (unpruned) fields and validates all of them."""
    if config.original_head_dim is None:
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({config.hidden_size}) is not divisible by `num_attention_heads` "
                f"({config.num_attention_heads}); set `original_head_dim` explicitly."
            )
        config.original_head_dim = config.hidden_size // config.num_attention_heads
    n = config.num_hidden_layers
    defaults = {
        "num_heads_per_layer": config.num_attention_heads,
        "qk_head_dims": config.original_head_dim,
        "v_head_dims": config.original_head_dim,
        "intermediate_sizes": config.intermediate_size,
    }
    for name in _PER_LAYER_FIELDS:
        value = getattr(config, name)
        if value is None:
            value = [defaults[name]] * n
        value = [int(v) for v in value]
        if len(value) != n:
            raise ValueError(
                f"`{name}` has {len(value)} entries but the model has num_hidden_layers={n}; give one value per layer."
            )
        bad = [(i, v) for i, v in enumerate(value) if v < 0]
        if bad:
            raise ValueError(f"`{name}` must be >= 0 in every layer, got {bad[0][1]} in layer {bad[0][0]}.")
        setattr(config, name, value)
    # block pruning: 0 heads (with 0 query/key and value dims) = the layer's attention block removed, 0 MLP units =
    # its MLP block removed; otherwise every attention dim is at least 1
    for idx, dims in enumerate(zip(config.num_heads_per_layer, config.qk_head_dims, config.v_head_dims, strict=True)):
        if 0 in dims and any(dims):
            raise ValueError(
                f"Layer {idx} has (heads, qk_head_dim, v_head_dim) = {dims}: either all three are 0 (its attention "
                "block removed) or all are >= 1."
            )
    if config.original_head_dim < 1:
        raise ValueError(f"`original_head_dim` must be >= 1, got {config.original_head_dim}.")


@dataclass(kw_only=True)
class SNPConfigMixin:
    """Per-layer dimensions shared by the SNP ViT and DeiT configs.

    Fields (all lists have one entry per layer; `None` means "unpruned", filled from the uniform fields):
        num_heads_per_layer: number of attention heads of every layer (0: the layer's attention block is removed,
            with its LayerNorm; its query/key and value dims are 0 too).
        qk_head_dims: query/key dim of every head of a layer (the same for all heads of a layer).
        v_head_dims: value dim of every head of a layer (may differ from `qk_head_dims`).
        intermediate_sizes: MLP width of every layer (0: the layer's MLP block is removed, with its LayerNorm).
        original_head_dim: head dim of the unpruned model; the attention logits keep the scale
            `original_head_dim ** -0.5` after query/key dims are pruned, so attention maps are preserved.

    `hidden_size` is the (possibly pruned) width of the residual stream; `num_attention_heads` and
    `intermediate_size` keep the values of the unpruned model for reference.
    """

    num_heads_per_layer: list[int] | None = None
    qk_head_dims: list[int] | None = None
    v_head_dims: list[int] | None = None
    intermediate_sizes: list[int] | None = None
    original_head_dim: int | None = None

    def __post_init__(self, **kwargs):
        _fill_and_check_per_layer(self)
        super().__post_init__(**kwargs)

    def attention_scaling(self) -> float:
        return float(self.original_head_dim) ** -0.5


@strict
class SNPViTConfig(SNPConfigMixin, ViTConfig):
    r"""Configuration of an SNP-pruned ViT (`model_type="snp_vit"`); see [`SNPConfigMixin`] for the extra fields."""

    model_type = "snp_vit"


@strict
class SNPDeiTConfig(SNPConfigMixin, DeiTConfig):
    r"""Configuration of an SNP-pruned DeiT (`model_type="snp_deit"`); see [`SNPConfigMixin`] for the extra fields."""

    model_type = "snp_deit"


__all__ = ["SNPViTConfig", "SNPDeiTConfig"]
