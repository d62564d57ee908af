# Copyright 2026 The optimum-snp authors. Licensed under the Apache License, Version 2.0.
"""Configuration of SNP-pruned DistilBERT models.

A pruned model is a smaller *dense* model whose layers may all differ: every layer has its own number of
heads, query/key head dim, value head dim and FFN width. This config extends the stock `DistilBertConfig` with
one explicit list per quantity, so that every module reads its shapes from the config (transformers' way) and
the modeling file carries no pruning logic. The hidden size (`dim`) is not pruned.

DistilBERT names its uniform fields `dim`, `n_heads`, `n_layers` and `hidden_dim` (the FFN width; it has no
`intermediate_size` alias), so the per-layer defaults are filled here rather than by the ViT/DeiT mixin.

This file only uses transformers / huggingface_hub imports so that it can be copied next to a checkpoint for
`trust_remote_code=True`.
"""

from huggingface_hub.dataclasses import strict
from transformers import DistilBertConfig


_PER_LAYER_FIELDS = ("num_heads_per_layer", "qk_head_dims", "v_head_dims", "intermediate_sizes")


def _fill_and_check_per_layer(config) -> None:
    """Fills unset per-layer fields from the uniform (unpruned) DistilBERT fields and validates all of them."""
    if config.original_head_dim is None:
        if config.n_heads < 1 or config.dim % config.n_heads:
            raise ValueError(
                f"`dim` ({config.dim}) is not divisible by `n_heads` ({config.n_heads}); set `original_head_dim` "
                "explicitly."
            )
        config.original_head_dim = config.dim // config.n_heads
    if int(config.original_head_dim) < 1:
        raise ValueError(f"`original_head_dim` must be >= 1, got {config.original_head_dim}.")
    config.original_head_dim = int(config.original_head_dim)
    n = config.n_layers
    defaults = {
        "num_heads_per_layer": config.n_heads,
        "qk_head_dims": config.original_head_dim,
        "v_head_dims": config.original_head_dim,
        "intermediate_sizes": config.hidden_dim,
    }
    for name in _PER_LAYER_FIELDS:
        value = getattr(config, name)
        if value is None:
            value = [defaults[name]] * n
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise ValueError(f"`{name}` must be a list with one int per layer, got {value!r}.")
        value = [int(v) for v in value]
        if len(value) != n:
            raise ValueError(
                f"`{name}` has {len(value)} entries but the model has n_layers={n}; give one value per layer."
            )
        bad = [(i, v) for i, v in enumerate(value) if v < 1]
        if bad:
            raise ValueError(
                f"`{name}` must be >= 1 in every layer, got {bad[0][1]} in layer {bad[0][0]}: a layer needs at least "
                "one head, one query/key and value dim per head and one FFN unit."
            )
        setattr(config, name, value)


@strict
class SNPDistilBertConfig(DistilBertConfig):
    r"""Configuration of an SNP-pruned DistilBERT (`model_type="snp_distilbert"`).

    Extra fields (all lists have one entry per layer; `None` means "unpruned", filled from the uniform fields):
        num_heads_per_layer: number of attention heads of every layer (default `n_heads`).
        qk_head_dims: query/key dim of every head of a layer (the same for all heads of a layer; default
            `dim // n_heads`).
        v_head_dims: value dim of every head of a layer (may differ from `qk_head_dims`; default `dim // n_heads`).
        intermediate_sizes: FFN width of every layer (default `hidden_dim`).
        original_head_dim: head dim of the unpruned model (default `dim // n_heads`); the attention logits keep the
            scale `original_head_dim ** -0.5` after query/key dims are pruned, so attention maps are preserved.

    `dim` is the width of the residual stream (not pruned); `n_heads` and `hidden_dim` keep the values of the
    unpruned model for reference.
    """

    model_type = "snp_distilbert"

    num_heads_per_layer: list[int] | None = None
    qk_head_dims: list[int] | None = None
    v_head_dims: list[int] | None = None
    intermediate_sizes: list[int] | None = None
    original_head_dim: int | None = None

    def __post_init__(self, **kwargs):
        _fill_and_check_per_layer(self)
        super().__post_init__(**kwargs)

    def attention_scaling(self) -> float:
        """The attention logit scale of the unpruned model, `original_head_dim ** -0.5`."""
        return float(self.original_head_dim) ** -0.5


__all__ = ["SNPDistilBertConfig"]
