"""The adapter interface: everything the pipeline needs to know about one architecture, in one place.

An adapter wraps a model instance and answers the questions the steps ask (SNP_METHOD section 2):

- where the coupled tensors of a layer live (`layer_modules`, with the canonical keys `q_proj`, `k_proj`,
  `v_proj`, `o_proj`, `attention`, `fc1`, `fc2`), and so which tensor axes carry every prunable group
  (`layer_groups`, derived from those modules) and the hidden channel (`hidden_group`);
- which norms feed which projections (`hidden_readers`), which projections the refit solves for
  (`reconstruction_targets`);
- the model's inputs (`model_inputs`, `token_mask`), its size (`num_tokens`, `embedding_size`, `head_size`),
  the Auto class / task / pipeline tag, the preprocessor, the ONNX inputs and outputs, what the card shows;
- how to build the pruned model (`snp_class`, `pruned_config`).

Adding an architecture = writing one adapter (plus its model family) and calling `register_adapter`. Nothing
else in the package knows architectures.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layer_dims import LayerDims, ModelSize, transformer_layer_size


PER_LAYER_FIELDS = ("num_heads_per_layer", "qk_head_dims", "v_head_dims", "intermediate_sizes")


class ArchitectureAdapter:
    """Base of every adapter. Subclasses set the class attributes and implement the methods marked below."""

    architecture: str = ""  # a short name ("vit", "bert", ...)
    model_types: tuple[str, ...] = ()  # stock and SNP `config.model_type` values served
    modality: str = "image"  # "image" or "text": which calibration data and preprocessor the model takes
    main_input_name: str = "pixel_values"
    snp_config_class: type | None = None
    # stock or SNP class name -> (SNP class a plan produces, name of the transformers Auto class that loads it)
    snp_classes: dict[str, tuple[type, str]] = {}
    pipeline_tags: dict[str, str] = {}  # stock class name suffix -> Hub pipeline tag
    supports_hidden_pruning: bool = True
    # whether the SNP family can drop a whole attention or MLP block of a layer (block pruning: its dims 0)
    supports_block_removal: bool = False
    # whether q_proj, k_proj and v_proj reach the rest of the layer only through o_proj's input (standard attention):
    # the refit then replays a layer's attention from o_proj's recorded inputs after refitting o_proj, instead of
    # computing the attention again for the projections after it
    attention_only_through_o_proj: bool = True
    # reconstruction targets whose output is added, unchanged, to the layer's output (pre-norm residual blocks), so
    # the refit can correct the layer output instead of running the layer again
    residual_output_targets: tuple[str, ...] = ()
    # refit_target='residual': per reconstruction target, where `proj(x) + residual` (the sum the branch writes to the
    # residual stream) can be read: the key of a layer module whose first input it is, or "output" (the layer's
    # output); a module the layer lacks (a block removed whole) means the layer's output. Targets not named here are
    # refit to their own output.
    residual_sums: dict[str, str] = {}
    # SNPConfig.refit_target when None: 'output' (the projection's own output) or 'residual' (see above)
    default_refit_target: str = "output"
    # allocation='validated' also tries allocation='sensitivity' (measured per-(layer, group) loss curves; costs
    # 12 cuts per layer, each refit and measured on the held-out samples)
    sensitivity_candidate: bool = False
    # what criterion="snp" (the default) means for this architecture where it differs from config.SNP_DEFAULTS:
    # {group: criterion}
    default_criteria: dict[str, str] = {}
    # the held-out divergence of a base model (no logits) that chooses among candidates: False, the relative mean
    # squared error of its hidden states per token; True, 1 - cosine of their mean over each sequence's real tokens
    # (its sentence embedding); "pairwise", the squared change of the cosine similarity of every pair of those
    # sentence embeddings (the geometry that retrieval and a Spearman correlation of similarities read)
    pooled_divergence: bool | str = False
    # the least-squares refit's ridge when SNPConfig.ridge is None (relative to the mean of diag(X^T X)), or "cv"
    # (chosen per projection by cross-validation over calibration batches; `fallback_ridge` when there is only one)
    default_ridge: float | str = 1e-3
    fallback_ridge: float = 1e-3
    # calibration samples when SNPConfig.num_calibration_samples is None (held-out validation samples come on top)
    default_calibration_samples: int = 64
    # held-out samples when SNPConfig.num_validation_samples is None: 64 images chose better than 32 on the tune model
    # patches-vit at 50% MACs (83.7% / KL 0.013 vs 82.1% / 0.023; equal in the other three tune cells; 128 was worse at
    # 30%): `python benchmarks/ablation.py --tables validation`
    default_validation_samples: int = 64

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config
        self.class_name = self.stock_name(type(model).__name__)

    # ---- identity -----------------------------------------------------------------------------------------
    @staticmethod
    def stock_name(name: str) -> str:
        """The stock class name of a (stock or SNP) class name: `SNPViTModel` -> `ViTModel`."""
        return name[3:] if name.startswith("SNP") else name

    @classmethod
    def serves(cls, model: nn.Module) -> bool:
        return type(model).__name__ in cls.snp_classes

    def snp_class(self) -> type:
        return self.snp_classes[type(self.model).__name__][0]

    @classmethod
    def snp_model_classes(cls) -> list[type]:
        return list(dict.fromkeys(snp for snp, _ in cls.snp_classes.values()))

    @classmethod
    def auto_class_name(cls, class_name: str) -> str:
        """Name of the transformers Auto class that loads `class_name` (stock or SNP)."""
        entry = cls.snp_classes.get(class_name) or cls.snp_classes.get("SNP" + cls.stock_name(class_name))
        if entry is None:
            raise ValueError(f"{cls.__name__} does not serve {class_name!r}; it serves {sorted(cls.snp_classes)}.")
        return entry[1]

    @classmethod
    def pipeline_tag(cls, class_name: str) -> str:
        stock = cls.stock_name(class_name)
        for suffix, tag in cls.pipeline_tags.items():
            if stock.endswith(suffix):
                return tag
        return "feature-extraction" if cls.modality == "text" else "image-feature-extraction"

    # ---- dimensions ---------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @classmethod
    def stock_dims(cls, config) -> LayerDims:
        """The (uniform) dims of a stock config's layers."""
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return LayerDims(config.num_attention_heads, head_dim, head_dim, config.intermediate_size)

    @classmethod
    def dims_from_config(cls, config) -> list[LayerDims]:
        """Per-layer dims of a stock config (uniform) or of an SNP config (per-layer lists)."""
        if getattr(config, "num_heads_per_layer", None) is not None:
            lists = [getattr(config, name) for name in PER_LAYER_FIELDS]
            return [LayerDims(*values) for values in zip(*lists, strict=True)]
        return [cls.stock_dims(config)] * config.num_hidden_layers

    @classmethod
    def original_dims(cls, config) -> tuple[int, list[LayerDims]]:
        """(hidden size, per-layer dims) of the unpruned model a (stock or SNP) config descends from: SNP configs keep
        the unpruned `num_attention_heads`, `intermediate_size` and `original_head_dim` for reference."""
        dims = cls.stock_dims(config)
        head_dim = getattr(config, "original_head_dim", None) or dims.qk_head_dim
        dims = LayerDims(dims.num_heads, head_dim, head_dim, dims.intermediate_size)
        hidden = dims.num_heads * head_dim if cls.supports_hidden_pruning else config.hidden_size
        return hidden, [dims] * config.num_hidden_layers

    def layer_dims(self) -> list[LayerDims]:
        return self.dims_from_config(self.config)

    # ---- modules (implement) ------------------------------------------------------------------------------
    def base_model(self) -> nn.Module:
        raise NotImplementedError

    def layers(self) -> nn.ModuleList:
        raise NotImplementedError

    def layer_modules(self, idx: int) -> dict[str, nn.Module]:
        """The layer's modules under canonical keys: q_proj, k_proj, v_proj, o_proj, attention (with `.scaling`),
        fc1, fc2 (and its norms under their own names)."""
        raise NotImplementedError

    def hidden_readers(self) -> list[tuple[nn.Module, list[nn.Module], str]]:
        """(module whose output is a hidden-channel activation, the Linear modules that read it, a label), for the
        'contribution' hidden-channel criterion."""
        return []

    def hidden_group(self) -> list[tuple[str, int]]:
        """(parameter name, axis) of every tensor that carries a hidden (residual-stream) channel."""
        return []

    def classifier_modules(self) -> list[nn.Linear]:
        return []

    # ---- derived from the modules -------------------------------------------------------------------------
    def layer(self, idx: int) -> nn.Module:
        return self.layers()[idx]

    def _names(self) -> dict[nn.Module, str]:
        if not hasattr(self, "_module_names"):
            self._module_names = {module: name for name, module in self.model.named_modules()}
        return self._module_names

    def layer_groups(self, idx: int) -> dict[str, list[tuple[str, int]]]:
        """(parameter name, axis) of every tensor that loses an index of the layer's QK, V and MLP groups. QK and V
        indices are flat over heads (head h, dim i -> h * head_dim + i); the head group is expressed through them."""
        mods, names = self.layer_modules(idx), self._names()

        def params(key: str, axis: int, bias: bool = True) -> list[tuple[str, int]]:
            module = mods[key]
            out = [(f"{names[module]}.weight", axis)]
            if bias and axis == 0 and getattr(module, "bias", None) is not None:
                out.append((f"{names[module]}.bias", 0))
            return out

        groups = {"mlp": params("fc1", 0) + params("fc2", 1)} if "fc1" in mods else {}
        if "q_proj" in mods:  # layers without attention have only the MLP group
            groups = {
                "qk": params("q_proj", 0) + params("k_proj", 0),
                "v": params("v_proj", 0) + params("o_proj", 1),
                **groups,
            }
        return groups

    def attention_scaling(self, idx: int) -> float:
        return float(self.layer_modules(idx)["attention"].scaling)

    def attention_bias(self, idx: int) -> torch.Tensor | None:
        """(heads, tokens, tokens) added to layer `idx`'s attention logits before the softmax (e.g. EfficientFormer's
        learned positional bias), or None. The query/key criteria compute the attention probabilities with it."""
        return None

    def output_scale(self, idx: int, key: str) -> torch.Tensor | None:
        """Per-output-channel factor between the projection `key` of layer `idx` and the residual stream it writes
        (layer scale, an inference-mode BatchNorm), or None for 1. The criteria weigh a unit's output weights with it,
        so that units are compared by what they add to the residual stream."""
        return None

    def reconstruction_targets(self, idx: int | None = None) -> list[tuple[str, str]]:
        """(module key, group) of every projection that reads a pruned group of a layer and writes the residual
        stream, in forward order: the modules `reconstruction.reconstruct` refits. With `idx`, those layer `idx` has
        (a layer without attention has no `o_proj`)."""
        targets = [("o_proj", "v"), ("fc2", "mlp")]
        if idx is None:
            return targets
        modules = self.layer_modules(idx)
        return [(key, group) for key, group in targets if key in modules]

    # ---- inputs -------------------------------------------------------------------------------------------
    def model_inputs(self, batch) -> dict:
        """Keyword arguments of the model's forward for one calibration batch (a dict of model inputs, or a tensor
        of the main input), on the model's device, floating inputs in the model's dtype."""
        param = next(self.model.parameters())
        inputs = dict(batch) if isinstance(batch, dict) else {self.main_input_name: batch}
        return {
            k: v.to(param.device, dtype=param.dtype if v.is_floating_point() else None) if torch.is_tensor(v) else v
            for k, v in inputs.items()
        }

    def read_tokens(self) -> int:
        """How many leading tokens' outputs the task head reads (a class token: 1); 0 when it reads every token (a
        base model's hidden states, a pooled embedding). `criterion={"qk": "attention_kl_cls"}` weights those rows."""
        return 0

    def token_mask(self, batch) -> torch.Tensor | None:
        """(batch, tokens) bool mask of the real (not padding) tokens of a batch, or None when all are real."""
        if isinstance(batch, dict) and batch.get("attention_mask") is not None:
            mask = batch["attention_mask"].bool()
            return None if bool(mask.all()) else mask.to(next(self.model.parameters()).device)
        return None

    # ---- size (from a config alone; implement) -------------------------------------------------------------
    @classmethod
    def num_tokens(cls, config, input_size=None) -> int:
        raise NotImplementedError

    @classmethod
    def qkv_bias(cls, config) -> bool:
        return True

    @classmethod
    def embedding_size(cls, config, hidden_size: int, tokens: int) -> ModelSize:
        raise NotImplementedError

    @classmethod
    def layer_size(cls, config, idx: int, dims: LayerDims, hidden_size: int, tokens: int, qkv_bias: bool) -> ModelSize:
        """Params and MACs of layer `idx` with `dims` (`tokens`: the model's token count for the input size). The
        pre-norm transformer layer by default; hybrids override it."""
        return transformer_layer_size(dims, hidden_size, tokens, qkv_bias)

    @classmethod
    def head_size(cls, config, class_name: str, hidden_size: int, tokens: int) -> ModelSize:
        """Params and MACs after the last layer (final norm, pooler, task heads) for the stock class `class_name`."""
        raise NotImplementedError

    # ---- the pruned model ---------------------------------------------------------------------------------
    def pruned_fields(self, hidden_size: int) -> dict:
        """Config fields the pruned config sets besides the per-layer dims."""
        return {"hidden_size": hidden_size}

    def pruned_config(self, hidden_size: int, layer_dims: list[LayerDims]):
        """The SNP config of this model with new dims; every other field (labels, sizes, ...) is kept."""
        config = self.config
        fields = config.to_dict()
        for key in ("model_type", "transformers_version", "architectures", "auto_map", "head_dim"):
            fields.pop(key, None)
        fields.update(self.pruned_fields(hidden_size))
        fields.update(
            num_heads_per_layer=[d.num_heads for d in layer_dims],
            qk_head_dims=[d.qk_head_dim for d in layer_dims],
            v_head_dims=[d.v_head_dim for d in layer_dims],
            intermediate_sizes=[d.intermediate_size for d in layer_dims],
            original_head_dim=self.original_dims(config)[1][0].qk_head_dim,
        )
        new_config = self.snp_config_class.from_dict(fields)
        new_config._attn_implementation = config._attn_implementation
        return new_config

    # ---- preprocessing, export, card (implement where they differ) ----------------------------------------
    def load_preprocessor(self, source: str | None):
        """The model's image processor or tokenizer, from `source` (a folder or Hub id) or derived from the config."""
        raise NotImplementedError

    def onnx_inputs(self, batch_size: int, seed: int = 0, variant: int = 0) -> dict[str, torch.Tensor]:
        """Example inputs for the ONNX export and its validation, by input name, in the model's forward order (axis 0
        is the batch axis; see `onnx_dynamic_axes`). `variant` changes the other dynamic axes (e.g. the sequence
        length), so that validation proves they are dynamic."""
        raise NotImplementedError

    def onnx_dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {name: {0: "batch_size"} for name in self.onnx_inputs(1)}

    @property
    def input_names(self) -> list[str]:
        return list(self.onnx_inputs(1))

    def onnx_output_names(self) -> list[str]:
        raise NotImplementedError

    @classmethod
    def card_snippet(cls, class_name: str, name: str) -> str:
        """Python code that loads the model `name` (a repo id or folder), shown in the model card."""
        auto = cls.auto_class_name(class_name)
        return (
            "import optimum_snp  # registers the SNP model classes\n"
            f"from transformers import {auto}\n\n"
            f'model = {auto}.from_pretrained("{name}")  # or trust_remote_code=True without optimum-snp'
        )

    @classmethod
    def _card_snippet_with_preprocessor(cls, class_name: str, name: str, auto_preprocessor: str, variable: str) -> str:
        """The card snippet of a model that comes with a preprocessor (`AutoImageProcessor`, `AutoTokenizer`)."""
        auto = cls.auto_class_name(class_name)
        return (
            "import optimum_snp  # registers the SNP model classes with the transformers Auto classes\n"
            f"from transformers import {auto_preprocessor}, {auto}\n\n"
            f'model = {auto}.from_pretrained("{name}")  # the Hub repo id or the local folder\n'
            f'{variable} = {auto_preprocessor}.from_pretrained("{name}")'
        )


class ImageAdapterMixin:
    """What image adapters share: the image processor (the checkpoint's, or derived from the config), one
    `pixel_values` input of the config's image size for ONNX, and a card snippet that loads the processor too."""

    def load_preprocessor(self, source: str | None):
        from ..calibration import resolve_image_processor

        return resolve_image_processor(source, self.config)

    def onnx_inputs(self, batch_size: int, seed: int = 0, variant: int = 0) -> dict[str, torch.Tensor]:
        size = self.config.image_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        generator = torch.Generator().manual_seed(seed)
        return {"pixel_values": torch.randn(batch_size, self.config.num_channels, height, width, generator=generator)}

    @classmethod
    def card_snippet(cls, class_name: str, name: str) -> str:
        return cls._card_snippet_with_preprocessor(class_name, name, "AutoImageProcessor", "image_processor")


__all__ = ["PER_LAYER_FIELDS", "ArchitectureAdapter", "ImageAdapterMixin"]
