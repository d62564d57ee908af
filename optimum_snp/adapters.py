"""Per-architecture knowledge: where every coupled tensor of a ViT / DeiT lives.

An adapter answers, for one architecture, the questions the scorer and the slicer ask: the per-layer
dimensions, the modules of a layer, and which tensor axes carry the index of every prunable group
(SNP_METHOD section 2). Adding an encoder means adding an adapter (and a modeling file), not editing the
scorer or the slicer.

Parameter names are shared by the stock transformers models and the SNP models, so one adapter serves both,
and an already pruned model can be pruned again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .models.configuration_snp import SNPConfigMixin, SNPDeiTConfig, SNPViTConfig
from .models.modeling_snp import (
    SNPDeiTForImageClassification,
    SNPDeiTForImageClassificationWithTeacher,
    SNPDeiTModel,
    SNPViTForImageClassification,
    SNPViTModel,
)


@dataclass(frozen=True)
class LayerDims:
    """Dimensions of one transformer layer."""

    num_heads: int
    qk_head_dim: int
    v_head_dim: int
    intermediate_size: int

    def to_dict(self) -> dict:
        return asdict(self)


def layer_dims_from_config(config) -> list[LayerDims]:
    """Per-layer dims of a stock ViT/DeiT config (uniform) or of an SNP config (per-layer lists)."""
    if isinstance(config, SNPConfigMixin):
        return [
            LayerDims(h, qk, v, m)
            for h, qk, v, m in zip(
                config.num_heads_per_layer,
                config.qk_head_dims,
                config.v_head_dims,
                config.intermediate_sizes,
                strict=False,
            )
        ]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dims = LayerDims(config.num_attention_heads, head_dim, head_dim, config.intermediate_size)
    return [dims] * config.num_hidden_layers


def original_head_dim(config) -> int:
    if isinstance(config, SNPConfigMixin):
        return config.original_head_dim
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class ViTAdapter:
    """transformers' ViT (`ViTModel`, `ViTForImageClassification`) and its SNP-pruned family."""

    architecture = "vit"
    model_types = ("vit", "snp_vit")
    base_model_prefix = "vit"
    snp_config_class = SNPViTConfig
    num_special_tokens = 1
    # embedding parameters whose last axis is the hidden (residual) channel
    token_parameters = ("cls_token", "mask_token", "position_embeddings")
    # stock or SNP class name -> SNP class that a plan produces
    snp_classes = {
        "ViTModel": SNPViTModel,
        "SNPViTModel": SNPViTModel,
        "ViTForImageClassification": SNPViTForImageClassification,
        "SNPViTForImageClassification": SNPViTForImageClassification,
    }
    classifier_names = {"ViTForImageClassification": ("classifier",)}

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config
        self.class_name = self._stock_name(type(model).__name__)

    @staticmethod
    def _stock_name(name: str) -> str:
        return name[3:] if name.startswith("SNP") else name

    # ---- dimensions -------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def layer_dims(self) -> list[LayerDims]:
        return layer_dims_from_config(self.config)

    # ---- modules ----------------------------------------------------------------------------------------
    @property
    def prefix(self) -> str:
        """Name prefix of the encoder's parameters inside the model ('' for a bare base model)."""
        return "" if self.class_name.endswith("Model") else self.base_model_prefix + "."

    def base_model(self) -> nn.Module:
        return self.model if not self.prefix else getattr(self.model, self.base_model_prefix)

    def layer(self, idx: int) -> nn.Module:
        return self.base_model().layers[idx]

    def layer_modules(self, idx: int) -> dict[str, nn.Module]:
        layer = self.layer(idx)
        att, mlp = layer.attention, layer.mlp
        return {
            "layernorm_before": layer.layernorm_before,
            "q_proj": att.q_proj,
            "k_proj": att.k_proj,
            "v_proj": att.v_proj,
            "o_proj": att.o_proj,
            "attention": att,
            "layernorm_after": layer.layernorm_after,
            "fc1": mlp.fc1,
            "fc2": mlp.fc2,
        }

    def reconstruction_targets(self) -> list[tuple[str, str]]:
        """(module key, group) of every projection that reads a pruned group of a layer and writes the residual
        stream, in forward order: the modules `reconstruction.reconstruct` refits."""
        return [("o_proj", "v"), ("fc2", "mlp")]

    # reconstruction targets whose output is added, unchanged, to the layer's output (pre-norm residual:
    # `hidden + fc2(...)`), so the refit can correct the layer output instead of running the layer again
    residual_output_targets = ("fc2",)

    def model_inputs(self, batch) -> dict:
        """Keyword arguments of the model's forward for one calibration batch, on the model's device (floating
        inputs in the model's dtype)."""
        param = next(self.model.parameters())
        inputs = dict(batch) if isinstance(batch, dict) else {"pixel_values": batch}
        return {
            k: v.to(param.device, dtype=param.dtype if v.is_floating_point() else None) if torch.is_tensor(v) else v
            for k, v in inputs.items()
        }

    def classifier_modules(self) -> list[nn.Linear]:
        return [getattr(self.model, name) for name in self.classifier_names.get(self.class_name, ())]

    # ---- coupling (SNP_METHOD section 2) ------------------------------------------------------------------
    def layer_groups(self, idx: int) -> dict[str, list[tuple[str, int]]]:
        """(parameter name, axis) of every tensor that loses an index of the layer's QK, V and MLP groups.

        QK and V indices are flat over heads (head h, dim i -> h * head_dim + i); the head group is expressed
        through them.
        """
        p = f"{self.prefix}layers.{idx}."
        att, mlp = p + "attention.", p + "mlp."
        bias = [] if not self.config.qkv_bias else ["bias"]
        return {
            "qk": [(att + f"{proj}.{kind}", 0) for proj in ("q_proj", "k_proj") for kind in ["weight", *bias]],
            "v": [(att + f"v_proj.{kind}", 0) for kind in ["weight", *bias]] + [(att + "o_proj.weight", 1)],
            "mlp": [(mlp + "fc1.weight", 0), (mlp + "fc1.bias", 0), (mlp + "fc2.weight", 1)],
        }

    def hidden_group(self) -> list[tuple[str, int]]:
        """(parameter name, axis) of every tensor that carries a hidden (residual-stream) channel."""
        p = self.prefix
        emb = p + "embeddings."
        names = [(emb + "patch_embeddings.projection.weight", 0), (emb + "patch_embeddings.projection.bias", 0)]
        names += [(emb + t, 2) for t in self.token_parameters]
        for idx in range(self.num_layers):
            lp = f"{p}layers.{idx}."
            for norm in ("layernorm_before", "layernorm_after"):
                names += [(lp + f"{norm}.weight", 0), (lp + f"{norm}.bias", 0)]
            names += [(lp + f"attention.{proj}.weight", 1) for proj in ("q_proj", "k_proj", "v_proj")]
            names += [(lp + "attention.o_proj.weight", 0), (lp + "attention.o_proj.bias", 0)]
            names += [(lp + "mlp.fc1.weight", 1), (lp + "mlp.fc2.weight", 0), (lp + "mlp.fc2.bias", 0)]
        names += [(p + "layernorm.weight", 0), (p + "layernorm.bias", 0), (p + "pooler.dense.weight", 1)]
        names += [(f"{name}.weight", 1) for name in self.classifier_names.get(self.class_name, ())]
        present = dict(self.model.named_parameters())
        return [(name, axis) for name, axis in names if name in present]

    # ---- the pruned model -------------------------------------------------------------------------------
    def snp_class(self) -> type:
        return self.snp_classes[type(self.model).__name__]

    def pruned_config(self, hidden_size: int, layer_dims: list[LayerDims]):
        """The SNP config of this model with new dims; every other field (labels, image size, ...) is kept."""
        config = self.config
        fields = config.to_dict()
        for key in ("model_type", "transformers_version", "architectures", "auto_map", "head_dim"):
            fields.pop(key, None)
        fields.update(
            hidden_size=hidden_size,
            pooler_output_size=config.pooler_output_size,  # a model output, not a residual channel
            num_heads_per_layer=[d.num_heads for d in layer_dims],
            qk_head_dims=[d.qk_head_dim for d in layer_dims],
            v_head_dims=[d.v_head_dim for d in layer_dims],
            intermediate_sizes=[d.intermediate_size for d in layer_dims],
            original_head_dim=original_head_dim(config),
        )
        new_config = self.snp_config_class.from_dict(fields)
        new_config._attn_implementation = config._attn_implementation
        return new_config


class DeiTAdapter(ViTAdapter):
    """transformers' DeiT (`DeiTModel`, `DeiTForImageClassification`, `...WithTeacher`) and its SNP family."""

    architecture = "deit"
    model_types = ("deit", "snp_deit")
    base_model_prefix = "deit"
    snp_config_class = SNPDeiTConfig
    num_special_tokens = 2
    token_parameters = ("cls_token", "distillation_token", "mask_token", "position_embeddings")
    snp_classes = {
        "DeiTModel": SNPDeiTModel,
        "SNPDeiTModel": SNPDeiTModel,
        "DeiTForImageClassification": SNPDeiTForImageClassification,
        "SNPDeiTForImageClassification": SNPDeiTForImageClassification,
        "DeiTForImageClassificationWithTeacher": SNPDeiTForImageClassificationWithTeacher,
        "SNPDeiTForImageClassificationWithTeacher": SNPDeiTForImageClassificationWithTeacher,
    }
    classifier_names = {
        "DeiTForImageClassification": ("classifier",),
        "DeiTForImageClassificationWithTeacher": ("cls_classifier", "distillation_classifier"),
    }


ADAPTERS: dict[str, type[ViTAdapter]] = {}


def register_adapter(adapter_cls: type[ViTAdapter]) -> type[ViTAdapter]:
    for model_type in adapter_cls.model_types:
        ADAPTERS[model_type] = adapter_cls
    return adapter_cls


register_adapter(ViTAdapter)
register_adapter(DeiTAdapter)


def supported_model_classes() -> list[str]:
    return sorted({name for cls in set(ADAPTERS.values()) for name in cls.snp_classes})


def get_adapter(model: nn.Module) -> ViTAdapter:
    """The adapter of `model`, or a ValueError that lists the supported model classes."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    adapter_cls = ADAPTERS.get(model_type)
    if adapter_cls is None or type(model).__name__ not in adapter_cls.snp_classes:
        raise ValueError(
            f"optimum-snp cannot prune {type(model).__name__} (model_type={model_type!r}). Supported model classes: "
            f"{', '.join(supported_model_classes())}. Load the checkpoint with one of them (e.g. "
            "AutoModelForImageClassification for a ViT/DeiT classifier)."
        )
    return adapter_cls(model)
