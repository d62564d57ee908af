# Copyright 2026 The optimum-snp authors. Licensed under the Apache License, Version 2.0.
"""Configuration of EfficientFormer (v1: L1, L3, L7) and of its SNP-pruned models.

EfficientFormer (Li et al., NeurIPS 2022) is a 4-stage hybrid: a convolutional stem (stride 4), then stages of
"4D" blocks (pooling token mixer + 1x1-convolution MLP with BatchNorm, on N x C x H x W maps), strided 3x3
downsampling convolutions between stages, and at the end of the last stage `num_vit` "3D" blocks (multi-head
attention with a learned attention-bias table + MLP, on tokens). transformers 5 removed its EfficientFormer; this
family is the transformers-format home of timm's `efficientformer_l1/l3/l7` weights (exact conversion in
`optimum_snp.adapters.efficientformer`) and of their pruned versions.

The blocks are numbered 0..sum(depths)-1 over all stages ("layers"). Every layer has its own dims, one list entry
per layer (`None` = unpruned, filled from the uniform fields):
    num_heads_per_layer: attention heads (0 in 4D blocks, which have no attention).
    qk_head_dims: query/key dim per head (0 in 4D blocks).
    v_head_dims: value dim per head (0 in 4D blocks).
    intermediate_sizes: MLP width.
`key_dim` stays the unpruned query/key head dim: the attention logits keep the scale `key_dim ** -0.5` after
query/key dims are pruned. The stage widths (`hidden_sizes`) are not pruned.

This file only uses transformers / huggingface_hub imports so that it can be copied next to a checkpoint for
`trust_remote_code=True`.
"""

import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


_PER_LAYER_FIELDS = ("num_heads_per_layer", "qk_head_dims", "v_head_dims", "intermediate_sizes")


def _pair(value) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (list, tuple)) else (int(value), int(value))


@strict
class SNPEfficientFormerConfig(PreTrainedConfig):
    r"""Configuration of an EfficientFormer (`model_type="snp_efficientformer"`); the defaults build
    EfficientFormer-L1 for 224 x 224 images and 1000 classes.

    Args:
        num_channels: input image channels.
        image_size: input image size (int or (height, width)); the attention-bias table covers the last stage's grid.
        depths: blocks per stage.
        hidden_sizes: width (channels) of every stage.
        downsamples: whether each stage starts with a strided 3x3 convolution (default: all but the first).
        num_vit: number of attention ("3D") blocks at the end of the last stage (at least 1).
        mlp_ratio: MLP width / stage width (unpruned).
        pool_size: kernel of the pooling token mixer of 4D blocks.
        key_dim: query/key dim per head of the attention (unpruned; sets the logit scale).
        num_attention_heads: attention heads (unpruned).
        attn_ratio: value dim / key dim (unpruned).
        layer_scale_init_value: initial value of the layer-scale vectors.
        layer_norm_eps, batch_norm_eps: epsilons of the 3D blocks' LayerNorms and of the BatchNorms.
        hidden_act: activation of the MLPs (the stem uses ReLU).
        use_distillation_head: a second (distillation) classifier whose logits are averaged with the first, as in
            the distilled timm checkpoints.
        initializer_range: std of the truncated normal initialization of Linear weights.
        num_heads_per_layer, qk_head_dims, v_head_dims, intermediate_sizes: per-layer dims (see the module docstring).
    """

    model_type = "snp_efficientformer"

    num_channels: int = 3
    image_size: int | list[int] | tuple[int, int] = 224
    depths: list[int] | tuple[int, ...] = (3, 2, 6, 4)
    hidden_sizes: list[int] | tuple[int, ...] = (48, 96, 224, 448)
    downsamples: list[bool] | tuple[bool, ...] | None = None
    num_vit: int = 1
    mlp_ratio: float | int = 4.0
    pool_size: int = 3
    key_dim: int = 32
    num_attention_heads: int = 8
    attn_ratio: float | int = 4.0
    layer_scale_init_value: float = 1e-5
    layer_norm_eps: float = 1e-5
    batch_norm_eps: float = 1e-5
    hidden_act: str = "gelu"
    use_distillation_head: bool = True
    initializer_range: float = 0.02
    num_heads_per_layer: list[int] | None = None
    qk_head_dims: list[int] | None = None
    v_head_dims: list[int] | None = None
    intermediate_sizes: list[int] | None = None

    def __post_init__(self, **kwargs):
        self.depths = [int(d) for d in self.depths]
        self.hidden_sizes = [int(h) for h in self.hidden_sizes]
        if len(self.depths) != len(self.hidden_sizes) or not self.depths:
            raise ValueError(
                f"`depths` ({self.depths}) and `hidden_sizes` ({self.hidden_sizes}) need one entry per stage."
            )
        if self.downsamples is None:
            self.downsamples = [False] + [True] * (len(self.depths) - 1)
        self.downsamples = [bool(d) for d in self.downsamples]
        if len(self.downsamples) != len(self.depths):
            raise ValueError(f"`downsamples` needs one entry per stage ({len(self.depths)}), got {self.downsamples}.")
        if not 1 <= self.num_vit <= self.depths[-1]:
            raise ValueError(
                f"`num_vit` must be between 1 and the last stage's depth ({self.depths[-1]}), got {self.num_vit}: the "
                "model's output is the last attention block's tokens."
            )
        for stage in range(1, len(self.depths)):
            if not self.downsamples[stage] and self.hidden_sizes[stage] != self.hidden_sizes[stage - 1]:
                raise ValueError(f"Stage {stage} changes the width without downsampling (`downsamples[{stage}]`).")
        self._fill_and_check_per_layer()
        super().__post_init__(**kwargs)

    # ---- derived geometry -----------------------------------------------------------------------------------
    @property
    def num_hidden_layers(self) -> int:
        """Blocks over all stages."""
        return sum(self.depths)

    @property
    def hidden_size(self) -> int:
        """Width of the model's output tokens (the last stage)."""
        return self.hidden_sizes[-1]

    @property
    def value_dim(self) -> int:
        """Value dim per head of the unpruned attention."""
        return int(self.attn_ratio * self.key_dim)

    def layer_specs(self) -> list[dict]:
        """Per layer: `stage`, `width`, `attention` (a 3D block), `downsample_from` (the width before the strided
        convolution the layer starts with, or None), `flatten` (the first 3D block turns the map into tokens),
        `grid` (the (height, width) of its feature map)."""
        height, width = _pair(self.image_size)
        height, width = math.ceil(height / 4), math.ceil(width / 4)  # the stem: two stride-2 convolutions
        specs, last = [], len(self.depths) - 1
        previous = self.hidden_sizes[0]
        for stage, (depth, dim) in enumerate(zip(self.depths, self.hidden_sizes, strict=True)):
            for block in range(depth):
                downsample = block == 0 and self.downsamples[stage]
                if downsample:
                    height, width = math.ceil(height / 2), math.ceil(width / 2)
                attention = stage == last and block >= depth - self.num_vit
                specs.append(
                    {
                        "stage": stage,
                        "width": dim,
                        "attention": attention,
                        "downsample_from": previous if downsample else None,
                        "flatten": attention and block == depth - self.num_vit,
                        "grid": (height, width),
                    }
                )
                previous = dim
        return specs

    def attention_grid(self) -> tuple[int, int]:
        """(height, width) of the last stage's map: the attention blocks' token grid."""
        return self.layer_specs()[-1]["grid"]

    def _fill_and_check_per_layer(self) -> None:
        specs = self.layer_specs()
        n = len(specs)
        for name in _PER_LAYER_FIELDS:
            value = getattr(self, name)
            if value is None:
                value = [self._default(name, spec) for spec in specs]
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise ValueError(f"`{name}` must be a list with one int per layer, got {value!r}.")
            value = [int(v) for v in value]
            if len(value) != n:
                raise ValueError(
                    f"`{name}` has {len(value)} entries but the model has {n} blocks (sum of `depths`); give one "
                    "value per block."
                )
            for idx, (v, spec) in enumerate(zip(value, specs, strict=True)):
                if name != "intermediate_sizes" and not spec["attention"] and v != 0:
                    raise ValueError(f"`{name}[{idx}]` must be 0: block {idx} is a pooling (4D) block, no attention.")
                if (name == "intermediate_sizes" or spec["attention"]) and v < 1:
                    raise ValueError(
                        f"`{name}[{idx}]` must be >= 1 (got {v}): a block keeps at least one MLP unit, and an attention "
                        "block at least one head and one query/key and value dim per head."
                    )
            setattr(self, name, value)

    def _default(self, name: str, spec: dict) -> int:
        if name == "intermediate_sizes":
            return int(spec["width"] * self.mlp_ratio)
        if not spec["attention"]:
            return 0
        return {"num_heads_per_layer": self.num_attention_heads, "qk_head_dims": self.key_dim}.get(
            name, self.value_dim
        )

    def attention_scaling(self) -> float:
        """The attention logit scale of the unpruned model, `key_dim ** -0.5`."""
        return float(self.key_dim) ** -0.5


__all__ = ["SNPEfficientFormerConfig"]
