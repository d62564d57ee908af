"""EfficientFormer (v1: L1, L3, L7; the paper's second architecture) and its SNP-pruned family, and the exact
conversion of timm's `EfficientFormer` into it.

Coupled groups, in SNP_METHOD section 2's style (layer = block, numbered over all stages):

- 4D block l (pooling mixer + MLP on an N x C x H x W map; `fc1`/`fc2` are 1x1 convolutions as Linear layers):
      MLP unit j  <->  fc1.weight[j, :], fc1.bias[j], mlp.norm1.{weight, bias, running_mean, running_var}[j]
                       (the BatchNorm between fc1 and the activation), fc2.weight[:, j]
  A unit's output reaches the residual stream through fc2, the BatchNorm after it and the layer scale: the criteria
  weigh fc2's columns by `ls2.gamma * norm2.weight / sqrt(norm2.running_var + eps)` (`output_scale`).
- 3D block l (the last stage's attention + MLP, on tokens):
      query/key pair (h, i)  <->  q_proj.weight[h*dq + i, :], q_proj.bias[h*dq + i], the same rows of k_proj
      value dim (h, i)       <->  v_proj.weight[h*dv + i, :], v_proj.bias[h*dv + i], o_proj.weight[:, h*dv + i]
      head h                 <->  all of the above for head h, and attention_biases[h, :] (the learned logit bias)
      MLP unit j             <->  fc1.weight[j, :], fc1.bias[j], fc2.weight[:, j]
  The query/key criteria compute the attention probabilities with the bias (`attention_bias`); the logit scale stays
  the unpruned `key_dim ** -0.5`. Output weights are weighed by the layer scales `ls1.gamma` / `ls2.gamma`.
- Stage widths (residual channels through the stem, downsampling convolutions, BatchNorms, LayerNorms and layer
  scales) are not pruned: they change at every stage, and the attention-bias grid fixes the token count.

Parameters and MACs are counted per block with its stage's width and grid (convolutions included, as
`torch.utils.flop_counter` counts them; pooling, norms and activations are not counted).
"""

from __future__ import annotations

import torch
from torch import nn

from ..layer_dims import LayerDims, ModelSize, transformer_layer_size
from ..models.configuration_snp_efficientformer import SNPEfficientFormerConfig
from ..models.modeling_snp_efficientformer import (
    SNPEfficientFormerAttentionBlock,
    SNPEfficientFormerForImageClassification,
    SNPEfficientFormerModel,
    attention_bias_index,
)
from . import register_adapter
from .base import ArchitectureAdapter, ImageAdapterMixin
from .timm import register_timm_converter


def _pair(value) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (list, tuple)) else (int(value), int(value))


class EfficientFormerAdapter(ImageAdapterMixin, ArchitectureAdapter):
    """optimum-snp's EfficientFormer family (`SNPEfficientFormerModel`, `SNPEfficientFormerForImageClassification`),
    unpruned (timm weights converted) or pruned."""

    architecture = "efficientformer"
    model_types = ("snp_efficientformer",)
    modality = "image"
    main_input_name = "pixel_values"
    base_model_prefix = "efficientformer"
    snp_config_class = SNPEfficientFormerConfig
    snp_classes = {
        "SNPEfficientFormerModel": (SNPEfficientFormerModel, "AutoModel"),
        "SNPEfficientFormerForImageClassification": (
            SNPEfficientFormerForImageClassification,
            "AutoModelForImageClassification",
        ),
    }
    pipeline_tags = {"ForImageClassification": "image-classification"}
    supports_hidden_pruning = False  # stage widths are not pruned
    residual_output_targets = ()  # layer scales (and a BatchNorm) sit between fc2 / o_proj and the residual stream

    # ---- modules ------------------------------------------------------------------------------------------
    @property
    def prefix(self) -> str:
        return "" if self.class_name.endswith("Model") else self.base_model_prefix + "."

    def base_model(self) -> nn.Module:
        return self.model if not self.prefix else getattr(self.model, self.base_model_prefix)

    def layers(self) -> nn.ModuleList:
        return self.base_model().layers

    def is_attention_block(self, idx: int) -> bool:
        return isinstance(self.layer(idx), SNPEfficientFormerAttentionBlock)

    def layer_modules(self, idx: int) -> dict[str, nn.Module]:
        layer = self.layer(idx)
        if not self.is_attention_block(idx):
            return {"fc1": layer.mlp.fc1, "mlp_norm": layer.mlp.norm1, "fc2": layer.mlp.fc2}
        att = layer.attention
        return {
            "layernorm_before": layer.norm1,
            "q_proj": att.q_proj,
            "k_proj": att.k_proj,
            "v_proj": att.v_proj,
            "o_proj": att.o_proj,
            "attention": att,
            "layernorm_after": layer.norm2,
            "fc1": layer.mlp.fc1,
            "fc2": layer.mlp.fc2,
        }

    def layer_groups(self, idx: int) -> dict[str, list[tuple[str, int]]]:
        groups = super().layer_groups(idx)
        name = f"{self.prefix}layers.{idx}."
        if self.is_attention_block(idx):
            groups["heads"] = [(name + "attention.attention_biases", 0)]
        else:
            norm = name + "mlp.norm1."
            groups["mlp"] += [(norm + leaf, 0) for leaf in ("weight", "bias", "running_mean", "running_var")]
        return groups

    def classifier_modules(self) -> list[nn.Linear]:
        return [
            m
            for m in (getattr(self.model, "classifier", None), getattr(self.model, "distillation_classifier", None))
            if isinstance(m, nn.Linear)
        ]

    def attention_bias(self, idx: int) -> torch.Tensor | None:
        return self.layer(idx).attention.attention_bias() if self.is_attention_block(idx) else None

    def output_scale(self, idx: int, key: str) -> torch.Tensor | None:
        layer = self.layer(idx)
        if self.is_attention_block(idx):
            return {"o_proj": layer.ls1.gamma, "fc2": layer.ls2.gamma}[key].detach()
        norm = layer.mlp.norm2  # inference-mode BatchNorm: x -> (x - mean) * weight / sqrt(var + eps) + bias
        return (layer.ls2.gamma * norm.weight / (norm.running_var + norm.eps).sqrt()).detach()

    # ---- dimensions ---------------------------------------------------------------------------------------
    @classmethod
    def original_dims(cls, config) -> tuple[int, list[LayerDims]]:
        """The stage widths never change; the unpruned dims follow from the uniform fields."""
        specs = config.layer_specs()
        dims = [
            LayerDims(
                config.num_attention_heads if s["attention"] else 0,
                config.key_dim if s["attention"] else 0,
                config.value_dim if s["attention"] else 0,
                int(s["width"] * config.mlp_ratio),
            )
            for s in specs
        ]
        return config.hidden_size, dims

    # ---- size ---------------------------------------------------------------------------------------------
    @classmethod
    def _check_input_size(cls, config, input_size) -> None:
        if input_size is not None and _pair(input_size) != _pair(config.image_size):
            raise ValueError(
                f"EfficientFormer's attention-bias table fixes its input size to {config.image_size} (the config's "
                f"image_size); cannot count it at {input_size}."
            )

    @classmethod
    def num_tokens(cls, config, input_size=None) -> int:
        """Tokens of the attention blocks (the last stage's grid)."""
        cls._check_input_size(config, input_size)
        height, width = config.attention_grid()
        return height * width

    @classmethod
    def embedding_size(cls, config, hidden_size: int, tokens: int) -> ModelSize:
        """The stem: two 3x3 stride-2 convolutions with BatchNorm."""
        height, width = _pair(config.image_size)
        mid, out = config.hidden_sizes[0] // 2, config.hidden_sizes[0]
        grid1 = -(-height // 2) * -(-width // 2)
        grid2 = -(-height // 4) * -(-width // 4)
        params = 9 * config.num_channels * mid + mid + 2 * mid + 9 * mid * out + out + 2 * out
        macs = grid1 * 9 * config.num_channels * mid + grid2 * 9 * mid * out
        return ModelSize(params=params, macs=macs)

    @classmethod
    def layer_size(cls, config, idx: int, dims: LayerDims, hidden_size: int, tokens: int, qkv_bias: bool) -> ModelSize:
        spec = config.layer_specs()[idx]
        c, (height, width) = spec["width"], spec["grid"]
        grid = height * width
        m = dims.intermediate_size
        size = ModelSize(0, 0)
        if spec["downsample_from"] is not None:  # 3x3 stride-2 convolution + BatchNorm
            c_in = spec["downsample_from"]
            size = ModelSize(params=9 * c_in * c + c + 2 * c, macs=grid * 9 * c_in * c)
        if spec["attention"]:
            layer = transformer_layer_size(dims, c, grid, qkv_bias=True)  # q/k/v/o, 2 LayerNorms, MLP, attention
            extra = 2 * c + dims.num_heads * grid  # layer scales, attention-bias table
            return size + ModelSize(params=layer.params + extra, macs=layer.macs)
        # pooling mixer (no MACs), layer scales, fc1 + BatchNorm, fc2 + BatchNorm
        params = 2 * c + (c * m + m) + 2 * m + (m * c + c) + 2 * c
        return size + ModelSize(params=params, macs=grid * 2 * c * m)

    @classmethod
    def head_size(cls, config, class_name: str, hidden_size: int, tokens: int) -> ModelSize:
        stock = cls.stock_name(class_name)
        if stock.endswith("ForImageClassification"):
            heads = 2 if config.use_distillation_head else 1
        elif stock.endswith("Model"):
            heads = 0
        else:
            raise ValueError(
                f"Cannot count the size of architecture {class_name!r}; expected a name ending in 'Model' or "
                "'ForImageClassification'."
            )
        d, labels = config.hidden_size, config.num_labels
        params, macs = 2 * d, 0  # final LayerNorm (the mean over tokens has no MACs)
        if labels > 0:
            params += heads * (d * labels + labels)
            macs += heads * d * labels
        return ModelSize(params=params, macs=macs)

    # ---- the pruned model ---------------------------------------------------------------------------------
    def pruned_config(self, hidden_size: int, layer_dims: list[LayerDims]):
        if hidden_size != self.config.hidden_size:
            raise ValueError("EfficientFormer's stage widths are not pruned; keep every hidden channel.")
        fields = self.config.to_dict()
        for key in ("model_type", "transformers_version", "architectures", "auto_map"):
            fields.pop(key, None)
        fields.update(
            num_heads_per_layer=[d.num_heads for d in layer_dims],
            qk_head_dims=[d.qk_head_dim for d in layer_dims],
            v_head_dims=[d.v_head_dim for d in layer_dims],
            intermediate_sizes=[d.intermediate_size for d in layer_dims],
        )
        new_config = SNPEfficientFormerConfig.from_dict(fields)
        new_config._attn_implementation = self.config._attn_implementation
        return new_config

    # ---- preprocessing, export ----------------------------------------------------------------------------
    def onnx_output_names(self) -> list[str]:
        if self.class_name.endswith("ForImageClassification"):
            return ["logits"]
        return ["last_hidden_state", "pooler_output"]


register_adapter(EfficientFormerAdapter)


# ---- conversion from timm -----------------------------------------------------------------------------------------
def _timm_error(option: str, value, fix: str = "") -> ValueError:
    return ValueError(
        f"Cannot convert this timm EfficientFormer: {option}={value!r} has no counterpart in optimum-snp's "
        f"EfficientFormer family{'; ' + fix if fix else ''}."
    )


def _timm_config(model: nn.Module, image_size) -> dict:
    """The `SNPEfficientFormerConfig` fields of a timm `EfficientFormer` instance (read from its modules)."""
    depths, widths, downsamples, num_vit = [], [], [], 0
    first = None
    for stage in model.stages:
        downsamples.append(not isinstance(stage.downsample, nn.Identity))
        blocks = [b for b in stage.blocks if type(b).__name__ != "Flat"]
        depths.append(len(blocks))
        kinds = [type(b).__name__ for b in blocks]
        unknown = sorted(set(kinds) - {"MetaBlock1d", "MetaBlock2d"})
        if unknown:
            raise _timm_error("block type", unknown[0])
        num_vit += kinds.count("MetaBlock1d")
        widths.append(blocks[0].ls1.gamma.numel())
        first = first or blocks[0]
    if getattr(model, "global_pool", "avg") != "avg":
        raise _timm_error("global_pool", model.global_pool, "only 'avg' is supported")
    mlp = first.mlp
    if not isinstance(mlp.act, nn.GELU) or getattr(mlp.act, "approximate", "none") != "none":
        raise _timm_error("act_layer", type(mlp.act).__name__, "only nn.GELU is supported")
    if not isinstance(mlp.norm1, nn.BatchNorm2d):
        raise _timm_error("norm_layer", type(mlp.norm1).__name__, "only nn.BatchNorm2d is supported")
    ratios = {
        b.mlp.fc1.out_channels / w if hasattr(b.mlp.fc1, "out_channels") else b.mlp.fc1.out_features / w
        for stage, w in zip(model.stages, widths, strict=True)
        for b in stage.blocks
        if type(b).__name__ != "Flat"
    }
    if len(ratios) != 1:
        raise _timm_error("mlp_ratios", sorted(ratios), "one MLP ratio for every block is supported")
    attention = next(b for stage in model.stages for b in stage.blocks if type(b).__name__ == "MetaBlock1d")
    att = attention.token_mixer
    pool = first.token_mixer.pool
    head = model.head if isinstance(model.head, nn.Linear) else None
    return dict(
        num_channels=model.stem.conv1.in_channels,
        image_size=image_size,
        depths=depths,
        hidden_sizes=widths,
        downsamples=downsamples,
        num_vit=num_vit,
        mlp_ratio=ratios.pop(),
        pool_size=pool.kernel_size if isinstance(pool.kernel_size, int) else pool.kernel_size[0],
        key_dim=att.key_dim,
        num_attention_heads=att.num_heads,
        attn_ratio=att.attn_ratio,
        layer_norm_eps=attention.norm1.eps,
        batch_norm_eps=first.mlp.norm1.eps,
        hidden_act="gelu",
        use_distillation_head=isinstance(getattr(model, "head_dist", None), nn.Linear),
        num_labels=head.out_features if head is not None else 0,
    )


def _copy_bn(state: dict, prefix: str, bn: nn.Module) -> None:
    for leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        state[prefix + leaf] = getattr(bn, leaf).detach().clone()


def _copy_linear(state: dict, prefix: str, module: nn.Module) -> None:
    weight = module.weight.detach()
    state[prefix + "weight"] = (weight.flatten(1) if weight.dim() == 4 else weight).clone()  # 1x1 conv -> Linear
    state[prefix + "bias"] = module.bias.detach().clone()


@torch.no_grad()
def convert_timm_efficientformer(model: nn.Module, image_size=None, id2label: dict | None = None) -> nn.Module:
    """The `SNPEfficientFormerForImageClassification` (or `SNPEfficientFormerModel` for a timm model without head)
    computing exactly what the timm `EfficientFormer` `model` computes in eval mode. `image_size`: the input size
    (default: timm's `pretrained_cfg` input size, else 224; it must give the attention-bias table's grid)."""
    if image_size is None:
        input_size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size") or (3, 224, 224)
        image_size = [int(input_size[1]), int(input_size[2])]
        image_size = image_size[0] if image_size[0] == image_size[1] else image_size
    fields = _timm_config(model, image_size)
    if id2label:
        fields["id2label"] = {int(k): v for k, v in id2label.items()}
    config = SNPEfficientFormerConfig(**fields)
    attention_blocks = [b for stage in model.stages for b in stage.blocks if type(b).__name__ == "MetaBlock1d"]
    grid = config.attention_grid()
    table = attention_blocks[0].token_mixer.attention_biases.shape[1]
    if grid[0] * grid[1] != table:
        raise ValueError(
            f"The timm model's attention-bias table covers {table} positions but image_size={image_size} gives a "
            f"{grid[0]}x{grid[1]} grid; pass the input size the model was built for (e.g. 224)."
        )
    with_head = config.num_labels > 0
    prefix = "efficientformer." if with_head else ""
    state = {}
    for name in ("conv1", "conv2"):
        conv = getattr(model.stem, name)
        state[f"{prefix}stem.{name}.weight"] = conv.weight.detach().clone()
        state[f"{prefix}stem.{name}.bias"] = conv.bias.detach().clone()
    _copy_bn(state, f"{prefix}stem.norm1.", model.stem.norm1)
    _copy_bn(state, f"{prefix}stem.norm2.", model.stem.norm2)
    idx = 0
    for stage in model.stages:
        blocks = [b for b in stage.blocks if type(b).__name__ != "Flat"]
        for position, block in enumerate(blocks):
            p = f"{prefix}layers.{idx}."
            if position == 0 and not isinstance(stage.downsample, nn.Identity):
                state[p + "downsample.conv.weight"] = stage.downsample.conv.weight.detach().clone()
                state[p + "downsample.conv.bias"] = stage.downsample.conv.bias.detach().clone()
                _copy_bn(state, p + "downsample.norm.", stage.downsample.norm)
            state[p + "ls1.gamma"] = block.ls1.gamma.detach().flatten().clone()
            state[p + "ls2.gamma"] = block.ls2.gamma.detach().flatten().clone()
            _copy_linear(state, p + "mlp.fc1.", block.mlp.fc1)
            _copy_linear(state, p + "mlp.fc2.", block.mlp.fc2)
            if type(block).__name__ == "MetaBlock2d":
                _copy_bn(state, p + "mlp.norm1.", block.mlp.norm1)
                _copy_bn(state, p + "mlp.norm2.", block.mlp.norm2)
            else:
                att = block.token_mixer
                for norm in ("norm1", "norm2"):
                    state[p + f"{norm}.weight"] = getattr(block, norm).weight.detach().clone()
                    state[p + f"{norm}.bias"] = getattr(block, norm).bias.detach().clone()
                # timm's fused qkv: per head, key_dim query rows, key_dim key rows, val_dim value rows
                kd, vd, heads = att.key_dim, att.val_dim, att.num_heads
                for leaf in ("weight", "bias"):
                    fused = getattr(att.qkv, leaf).detach().reshape(heads, 2 * kd + vd, -1)
                    q, k, v = fused.split([kd, kd, vd], dim=1)
                    shape = (-1, fused.shape[-1]) if leaf == "weight" else (-1,)
                    for key, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                        state[p + f"attention.{key}.{leaf}"] = part.reshape(shape).clone()
                state[p + "attention.o_proj.weight"] = att.proj.weight.detach().clone()
                state[p + "attention.o_proj.bias"] = att.proj.bias.detach().clone()
                state[p + "attention.attention_biases"] = att.attention_biases.detach().clone()
            idx += 1
    state[f"{prefix}norm.weight"] = model.norm.weight.detach().clone()
    state[f"{prefix}norm.bias"] = model.norm.bias.detach().clone()
    if with_head:
        _copy_linear(state, "classifier.", model.head)
        if config.use_distillation_head:
            _copy_linear(state, "distillation_classifier.", model.head_dist)
    cls = SNPEfficientFormerForImageClassification if with_head else SNPEfficientFormerModel
    with torch.device("meta"):
        converted = cls(config)
    converted.load_state_dict(state, strict=True, assign=True)
    for name, buffer in list(converted.named_buffers()):
        if buffer.is_meta:  # the non-persistent bias index: rebuilt from the config
            owner, _, leaf = name.rpartition(".")
            converted.get_submodule(owner)._buffers[leaf] = attention_bias_index(grid)
    converted.train(model.training)
    return converted


register_timm_converter(("EfficientFormer",), convert_timm_efficientformer)


__all__ = ["EfficientFormerAdapter", "convert_timm_efficientformer"]
