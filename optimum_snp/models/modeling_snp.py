# Copyright 2026 The optimum-snp authors. Licensed under the Apache License, Version 2.0.
"""SNP-pruned ViT / DeiT models: the stock architectures with per-layer dimensions read from the config.

Parameter names are identical to transformers' `ViT*` / `DeiT*` models, so a pruned state dict is the stock
one with rows/columns removed. Attention keeps the ORIGINAL logit scale (`config.original_head_dim ** -0.5`)
and supports a value head dim different from the query/key head dim, in eager and SDPA attention alike.

This file only uses sibling imports so that it can be copied next to a checkpoint for `trust_remote_code=True`;
optimum-snp, when installed, adds its save/load extras (pruning files, model card) from its own side.
"""

from collections.abc import Callable

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.deit.modeling_deit import DeiTEmbeddings, DeiTForImageClassificationWithTeacherOutput
from transformers.models.vit.modeling_vit import ViTEmbeddings, ViTPooler, eager_attention_forward
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_snp import SNPDeiTConfig, SNPViTConfig


def _sdpa_pad(head_dim: int, v_head_dim: int, device_type: str) -> tuple[int, int]:
    """Zero columns to append to the query/key and to the value head dims before SDPA on `device_type`, so that
    PyTorch's fused kernels accept them (zero-padding is exact: zero query/key columns add nothing to the scores,
    zero value columns give zero outputs, which are cut off after the attention).

    - CPU: the fused (flash) kernel needs equal query/key and value head dims; otherwise SDPA takes a path 3-6x
      slower (benchmarks/deit_latency.py). The narrower side is padded to the wider.
    - CUDA (`aten/src/ATen/native/transformers/cuda/sdp_utils.cpp`): flash attention needs q, k and v to have the
      same head dim (<= 256; it pads a dim that is not a multiple of 8 itself, with a copy), memory-efficient
      attention needs head dims that are multiples of 8 (fp16/bf16; 4 in fp32 on sm80+; q/k and v may differ),
      cuDNN attention (first choice on sm90/sm100 with a recent cuDNN) multiples of 8 and, through its layout check,
      equal ones. Both sides are padded to the larger dim rounded up to a multiple of 8, so every fused kernel applies.
    - elsewhere: no padding.
    """
    if device_type == "cpu":
        width = max(head_dim, v_head_dim)
    elif device_type == "cuda":
        width = -(-max(head_dim, v_head_dim) // 8) * 8
    else:
        return 0, 0
    return width - head_dim, width - v_head_dim


def _fuse_qkv(device_type: str) -> bool:
    """Whether inference on `device_type` runs query, key and value as one padded projection (see
    `SNPAttention._fused_weights`). On CUDA, small models are bound by kernel launches (a DeiT-S forward takes the same
    ~3.5 ms at batch 1 and 64 on an H200): one matrix product instead of three and no padding copies (4 launches less
    per layer) is what makes a pruned model faster there (`benchmarks/gpu_latency.py`). Not on the CPU, where launches
    are cheap."""
    return device_type == "cuda"


def _plain_linears(*modules: nn.Module) -> bool:
    """Whether `modules` are plain `nn.Linear`s that nothing observes or wraps (no forward hooks, no `forward`
    replaced on the instance, not a subclass such as a LoRA or quantized layer), so that their products may be
    computed from their weights directly."""
    hooked = nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks
    return not hooked and all(
        type(m) is nn.Linear and not m._forward_hooks and not m._forward_pre_hooks and "forward" not in vars(m)
        for m in modules
    )


def _pad_heads(tensor: torch.Tensor, heads: int, dim: int, pad: int, axis: int) -> torch.Tensor:
    """`tensor` with `pad` zeros appended to each of its `heads` blocks of `dim` entries along `axis`: 0 for a
    projection's output rows (a weight or a bias), 1 for its input columns."""
    if not pad:
        return tensor
    if axis == 0:
        blocks = tensor.reshape(heads, dim, -1)
        return nn.functional.pad(blocks, (0, 0, 0, pad)).reshape(heads * (dim + pad), *tensor.shape[1:])
    blocks = tensor.reshape(tensor.shape[0], heads, dim)
    return nn.functional.pad(blocks, (0, pad)).reshape(tensor.shape[0], heads * (dim + pad))


class SNPAttention(nn.Module):
    """Multi-head self-attention of layer `layer_idx`, with its own heads, query/key dim and value dim."""

    def __init__(self, config: SNPViTConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_attention_heads = config.num_heads_per_layer[layer_idx]
        self.head_dim = config.qk_head_dims[layer_idx]
        self.v_head_dim = config.v_head_dims[layer_idx]
        self.attention_dropout = config.attention_probs_dropout_prob
        # The logit scale of the unpruned model: pruning query/key dims must not rescale the attention scores.
        self.scaling = config.attention_scaling()
        self.is_causal = False

        qk_width = self.num_attention_heads * self.head_dim
        v_width = self.num_attention_heads * self.v_head_dim
        self.q_proj = nn.Linear(config.hidden_size, qk_width, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, qk_width, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, v_width, bias=config.qkv_bias)
        self.o_proj = nn.Linear(v_width, config.hidden_size, bias=True)
        self._fused = None  # (key, tensors) of `_fused_weights`; a cache, not a parameter or buffer

    def train(self, mode: bool = True):
        self._fused = None  # `model.eval()` / `.train()` drop the fused copies (e.g. after an edit through `.data`)
        return super().train(mode)

    def _fused_weights(self, qk_pad: int, v_pad: int) -> tuple:
        """Query, key and value projections as one (each head's rows zero-padded by `qk_pad` / `v_pad`, so that the
        product comes out in the padded layout SDPA takes) and the output projection with matching zero columns.
        Exact: zero query/key columns add nothing to the scores, zero value columns meet zero columns of `o_proj`.
        Built on first use and rebuilt when a weight is replaced or changed in place (its storage or version)."""
        params = [t for m in (self.q_proj, self.k_proj, self.v_proj, self.o_proj) for t in (m.weight, m.bias)]
        key = (qk_pad, v_pad) + tuple((t.data_ptr(), t._version) if t is not None else None for t in params)
        if self._fused is None or self._fused[0] != key:
            heads, qk, v = self.num_attention_heads, self.head_dim, self.v_head_dim
            rows = [(self.q_proj, qk, qk_pad), (self.k_proj, qk, qk_pad), (self.v_proj, v, v_pad)]
            weight = torch.cat([_pad_heads(m.weight, heads, d, p, axis=0) for m, d, p in rows])
            bias = None
            if self.q_proj.bias is not None:
                bias = torch.cat([_pad_heads(m.bias, heads, d, p, axis=0) for m, d, p in rows])
            o_weight = _pad_heads(self.o_proj.weight, heads, v, v_pad, axis=1)
            sizes = [heads * (qk + qk_pad)] * 2 + [heads * (v + v_pad)]
            self._fused = (key, (weight, bias, sizes, o_weight))
        return self._fused[1]

    def _fused_forward(self, hidden_states, attention_mask, attention_interface, qk_pad, v_pad, **kwargs):
        input_shape = hidden_states.shape[:-1]
        heads = self.num_attention_heads
        weight, bias, sizes, o_weight = self._fused_weights(qk_pad, v_pad)
        query, key, value = nn.functional.linear(hidden_states, weight, bias).split(sizes, dim=-1)
        query, key, value = (t.view(*input_shape, heads, -1).transpose(1, 2) for t in (query, key, value))
        attn_output, attn_weights = attention_interface(
            self, query, key, value, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs
        )
        attn_output = attn_output.reshape(*input_shape, -1)
        return nn.functional.linear(attn_output, o_weight, self.o_proj.bias), attn_weights

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        heads = self.num_attention_heads
        if (
            self.config._attn_implementation == "sdpa"
            and not self.training
            and not torch.is_grad_enabled()
            and _fuse_qkv(hidden_states.device.type)
            and not torch.compiler.is_compiling()
            and _plain_linears(self.q_proj, self.k_proj, self.v_proj, self.o_proj)
        ):
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface("sdpa", eager_attention_forward)
            qk_pad, v_pad = _sdpa_pad(self.head_dim, self.v_head_dim, hidden_states.device.type)
            return self._fused_forward(hidden_states, attention_mask, attention_interface, qk_pad, v_pad, **kwargs)
        self._fused = None  # training or another path: drop the cached copies
        query_states = self.q_proj(hidden_states).view(*input_shape, heads, self.head_dim).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(*input_shape, heads, self.head_dim).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(*input_shape, heads, self.v_head_dim).transpose(1, 2)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        if self.config._attn_implementation == "sdpa":
            # head dims the fused SDPA kernels of the device accept (see `_sdpa_pad`); exact, cut off below
            qk_pad, v_pad = _sdpa_pad(self.head_dim, self.v_head_dim, hidden_states.device.type)
            if qk_pad:
                query_states = nn.functional.pad(query_states, (0, qk_pad))
                key_states = nn.functional.pad(key_states, (0, qk_pad))
            if v_pad:
                value_states = nn.functional.pad(value_states, (0, v_pad))
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        if attn_output.shape[-1] != self.v_head_dim:  # padded above: (batch, tokens, heads, padded dim)
            attn_output = attn_output[..., : self.v_head_dim]
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class SNPMLP(nn.Module):
    def __init__(self, config: SNPViTConfig, layer_idx: int):
        super().__init__()
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_sizes[layer_idx])
        self.fc2 = nn.Linear(config.intermediate_sizes[layer_idx], config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class SNPLayer(GradientCheckpointingLayer):
    """A pre-norm block; a residual branch whose config dims are 0 (block pruning) is absent: the layer passes the
    hidden states through it unchanged."""

    def __init__(self, config: SNPViTConfig, layer_idx: int):
        super().__init__()
        has_attention = config.num_heads_per_layer[layer_idx] > 0
        has_mlp = config.intermediate_sizes[layer_idx] > 0
        self.attention = SNPAttention(config, layer_idx) if has_attention else None
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if has_attention else None
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if has_mlp else None
        self.mlp = SNPMLP(config, layer_idx) if has_mlp else None
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        if self.attention is not None:
            attn_output, _ = self.attention(self.layernorm_before(hidden_states), attention_mask, **kwargs)
            hidden_states = self.dropout(attn_output) + hidden_states
        if self.mlp is not None:
            hidden_states = self.dropout(self.mlp(self.layernorm_after(hidden_states))) + hidden_states
        return hidden_states


class SNPViTPreTrainedModel(PreTrainedModel):
    config_class = SNPViTConfig
    config: SNPViTConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["ViTEmbeddings", "DeiTEmbeddings", "SNPLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False  # flash kernels need equal q/k and v head dims
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": SNPLayer, "attentions": SNPAttention}

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        # safetensors weights are memory-mapped at arbitrary byte offsets; CPU kernels take other SIMD paths on
        # unaligned data, which moves logits by ~1e-7. Re-allocated (64-byte aligned) copies make a reloaded
        # model compute bit-for-bit what the saved one did.
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
                    tensor.data = tensor.data.clone()
        return model

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, ViTEmbeddings):
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=self.config.initializer_range)
            init.trunc_normal_(module.cls_token, mean=0.0, std=self.config.initializer_range)
            if getattr(module, "distillation_token", None) is not None:
                init.trunc_normal_(module.distillation_token, mean=0.0, std=self.config.initializer_range)
            if module.mask_token is not None:
                init.zeros_(module.mask_token)


class SNPViTModel(SNPViTPreTrainedModel):
    embeddings_class = ViTEmbeddings

    def __init__(self, config: SNPViTConfig, add_pooling_layer: bool = True, use_mask_token: bool = False):
        super().__init__(config)
        self.embeddings = self.embeddings_class(config, use_mask_token=use_mask_token)
        self.layers = nn.ModuleList([SNPLayer(config, i) for i in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = ViTPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.patch_embeddings

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.BoolTensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        if pixel_values is None:
            raise ValueError("You have to specify `pixel_values`.")
        expected_dtype = self.embeddings.patch_embeddings.projection.weight.dtype
        if pixel_values.dtype != expected_dtype:
            pixel_values = pixel_values.to(expected_dtype)
        hidden_states = self.embeddings(
            pixel_values, bool_masked_pos=bool_masked_pos, interpolate_pos_encoding=interpolate_pos_encoding
        )
        attention_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask
        )
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask, **kwargs)
        sequence_output = self.layernorm(hidden_states)
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        return BaseModelOutputWithPooling(last_hidden_state=sequence_output, pooler_output=pooled_output)


class SNPViTForImageClassification(SNPViTPreTrainedModel):
    def __init__(self, config: SNPViTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        setattr(self, self.base_model_prefix, self._base_model_class(config, add_pooling_layer=False))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @property
    def _base_model_class(self):
        return SNPViTModel

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> ImageClassifierOutput:
        outputs = getattr(self, self.base_model_prefix)(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, attention_mask=attention_mask, **kwargs
        )
        logits = self.classifier(outputs.last_hidden_state[:, 0, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class SNPDeiTPreTrainedModel(SNPViTPreTrainedModel):
    config_class = SNPDeiTConfig
    config: SNPDeiTConfig
    base_model_prefix = "deit"


class SNPDeiTModel(SNPDeiTPreTrainedModel, SNPViTModel):
    embeddings_class = DeiTEmbeddings


class SNPDeiTForImageClassification(SNPDeiTPreTrainedModel, SNPViTForImageClassification):
    @property
    def _base_model_class(self):
        return SNPDeiTModel


class SNPDeiTForImageClassificationWithTeacher(SNPDeiTPreTrainedModel):
    """DeiT with a class-token head and a distillation-token head; inference logits are their average."""

    def __init__(self, config: SNPDeiTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.deit = SNPDeiTModel(config, add_pooling_layer=False)
        head = (lambda: nn.Linear(config.hidden_size, config.num_labels)) if config.num_labels > 0 else nn.Identity
        self.cls_classifier = head()
        self.distillation_classifier = head()
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> DeiTForImageClassificationWithTeacherOutput:
        outputs = self.deit(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, attention_mask=attention_mask, **kwargs
        )
        sequence_output = outputs.last_hidden_state
        cls_logits = self.cls_classifier(sequence_output[:, 0, :])
        distillation_logits = self.distillation_classifier(sequence_output[:, 1, :])
        return DeiTForImageClassificationWithTeacherOutput(
            logits=(cls_logits + distillation_logits) / 2,
            cls_logits=cls_logits,
            distillation_logits=distillation_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = [
    "SNPViTPreTrainedModel",
    "SNPViTModel",
    "SNPViTForImageClassification",
    "SNPDeiTPreTrainedModel",
    "SNPDeiTModel",
    "SNPDeiTForImageClassification",
    "SNPDeiTForImageClassificationWithTeacher",
]
