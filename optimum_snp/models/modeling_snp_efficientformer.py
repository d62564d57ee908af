# Copyright 2026 The optimum-snp authors. Licensed under the Apache License, Version 2.0.
"""EfficientFormer (v1) in transformers format, with per-layer dimensions read from the config (SNP-pruned or not).

The computation is timm's `EfficientFormer` (`timm/efficientformer_l1.snap_dist_in1k`, ...), layer for layer:

    stem: conv3x3/2 - BN - ReLU - conv3x3/2 - BN - ReLU                                    (N, C, H/4, W/4)
    layers[i], a 4D block:  [downsample: conv3x3/2 - BN]  x += ls1 * (avgpool3(x) - x)
                            x += ls2 * BN(fc2(GELU(BN(fc1(x)))))        (fc1/fc2: 1x1 convolutions)
    layers[i], a 3D block:  [flatten to tokens]  x += ls1 * attention(LN(x));  x += ls2 * fc2(GELU(fc1(LN(x))))
    norm (LayerNorm), mean over tokens, classifier (+ distillation classifier, logits averaged)

Differences in form, not in value: the downsampling convolution of a stage lives in the stage's first block (so
`layers` is a plain chain), the MLPs' 1x1 convolutions are `nn.Linear` on the token axis (`fc1`/`fc2` weights are
the convolutions' without the trailing 1 x 1), and timm's fused `qkv` projection (per head: key_dim query, key_dim
key and value_dim value rows) is split into `q_proj`, `k_proj`, `v_proj`, each head-major. Attention:

    A = softmax(s Q K^T + B),  B[h, t, u] = attention_biases[h, idx(t, u)],  s = key_dim ** -0.5 (unpruned)

with its own heads, query/key dim and value dim per block; eager and SDPA give the same result.

This file only uses sibling imports so that it can be copied next to a checkpoint for `trust_remote_code=True`;
optimum-snp, when installed, adds its save/load extras (pruning files, model card) from its own side.
"""

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.generic import can_return_tuple

from .configuration_snp_efficientformer import SNPEfficientFormerConfig


class SNPEfficientFormerStem(nn.Module):
    def __init__(self, config: SNPEfficientFormerConfig):
        super().__init__()
        mid, out = config.hidden_sizes[0] // 2, config.hidden_sizes[0]
        self.conv1 = nn.Conv2d(config.num_channels, mid, kernel_size=3, stride=2, padding=1)
        self.norm1 = nn.BatchNorm2d(mid, eps=config.batch_norm_eps)
        self.conv2 = nn.Conv2d(mid, out, kernel_size=3, stride=2, padding=1)
        self.norm2 = nn.BatchNorm2d(out, eps=config.batch_norm_eps)
        self.act = nn.ReLU()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm2(self.conv2(self.act(self.norm1(self.conv1(pixel_values))))))


class SNPEfficientFormerDownsample(nn.Module):
    def __init__(self, config: SNPEfficientFormerConfig, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_channels, eps=config.batch_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(hidden_states))


class SNPEfficientFormerTokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channels of a (batch, tokens, channels) tensor: statistics over batch and tokens, as
    `BatchNorm2d` over batch, height and width. In inference mode it is the per-channel affine map of the running
    statistics, applied on the last axis (no transposed copies: 10% of EfficientFormer-L1's time at batch 16)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.training or self.running_var is None:
            return super().forward(hidden_states.transpose(1, 2)).transpose(1, 2)
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        return torch.addcmul(self.bias - self.running_mean * scale, hidden_states, scale)


class SNPEfficientFormerLayerScale(nn.Module):
    """Per-channel scale of a residual branch (channels on the last axis)."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states * self.gamma


class SNPEfficientFormerConvMlp(nn.Module):
    """The 4D blocks' MLP on tokens: fc1 - BN - act - fc2 - BN (timm's 1x1 convolutions as Linear layers)."""

    def __init__(self, config: SNPEfficientFormerConfig, dim: int, layer_idx: int):
        super().__init__()
        hidden = config.intermediate_sizes[layer_idx]
        self.fc1 = nn.Linear(dim, hidden)
        self.norm1 = SNPEfficientFormerTokenBatchNorm(hidden, eps=config.batch_norm_eps)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(hidden, dim)
        self.norm2 = SNPEfficientFormerTokenBatchNorm(dim, eps=config.batch_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.fc2(self.act(self.norm1(self.fc1(hidden_states)))))


class SNPEfficientFormerMlp(nn.Module):
    """The 3D blocks' MLP: fc1 - act - fc2."""

    def __init__(self, config: SNPEfficientFormerConfig, dim: int, layer_idx: int):
        super().__init__()
        hidden = config.intermediate_sizes[layer_idx]
        self.fc1 = nn.Linear(dim, hidden)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


def attention_bias_index(grid: tuple[int, int]) -> torch.Tensor:
    """(N, N) index into the bias table: |dy| * width + |dx| of every pair of grid positions (timm's layout)."""
    ys, xs = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()])
    rel = (pos[:, :, None] - pos[:, None, :]).abs()
    return rel[0] * grid[1] + rel[1]


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(s Q K^T + mask) V with a float additive mask (here: the attention bias); output (batch, N, heads, d)."""
    weights = (query @ key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = weights.softmax(dim=-1)
    return (weights @ value).transpose(1, 2).contiguous(), weights


class SNPEfficientFormerAttention(nn.Module):
    """Multi-head attention with a learned bias per head and relative grid offset; per-layer heads, query/key dim
    and value dim; the logit scale of the unpruned model."""

    def __init__(self, config: SNPEfficientFormerConfig, dim: int, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_heads_per_layer[layer_idx]
        self.head_dim = config.qk_head_dims[layer_idx]
        self.v_head_dim = config.v_head_dims[layer_idx]
        self.scaling = config.attention_scaling()
        self.is_causal = False
        grid = config.attention_grid()
        self.q_proj = nn.Linear(dim, self.num_heads * self.head_dim)
        self.k_proj = nn.Linear(dim, self.num_heads * self.head_dim)
        self.v_proj = nn.Linear(dim, self.num_heads * self.v_head_dim)
        self.o_proj = nn.Linear(self.num_heads * self.v_head_dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(self.num_heads, grid[0] * grid[1]))
        self.register_buffer("attention_bias_idxs", attention_bias_index(grid), persistent=False)

    def attention_bias(self) -> torch.Tensor:
        """(heads, N, N): the bias added to the attention logits."""
        return self.attention_biases[:, self.attention_bias_idxs]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = hidden_states.shape
        heads = self.num_heads
        query = self.q_proj(hidden_states).view(batch, tokens, heads, self.head_dim).transpose(1, 2)
        key = self.k_proj(hidden_states).view(batch, tokens, heads, self.head_dim).transpose(1, 2)
        value = self.v_proj(hidden_states).view(batch, tokens, heads, self.v_head_dim).transpose(1, 2)
        bias = self.attention_bias().to(query.dtype)[None]  # the attention bias as an additive float mask
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, _ = interface(self, query, key, value, bias, scaling=self.scaling, dropout=0.0)
        return self.o_proj(out.reshape(batch, tokens, heads * self.v_head_dim))


class SNPEfficientFormerPoolingBlock(nn.Module):
    """A 4D block on an (N, C, H, W) map, preceded by the stage's strided convolution if it is the stage's first."""

    def __init__(self, config: SNPEfficientFormerConfig, layer_idx: int):
        super().__init__()
        spec = config.layer_specs()[layer_idx]
        dim = spec["width"]
        self.downsample = (
            SNPEfficientFormerDownsample(config, spec["downsample_from"], dim)
            if spec["downsample_from"] is not None
            else None
        )
        self.pool = nn.AvgPool2d(config.pool_size, stride=1, padding=config.pool_size // 2, count_include_pad=False)
        self.ls1 = SNPEfficientFormerLayerScale(dim, config.layer_scale_init_value)
        self.mlp = SNPEfficientFormerConvMlp(config, dim, layer_idx)
        self.ls2 = SNPEfficientFormerLayerScale(dim, config.layer_scale_init_value)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            hidden_states = self.downsample(hidden_states)
        hidden_states = hidden_states + (self.pool(hidden_states) - hidden_states) * self.ls1.gamma[:, None, None]
        batch, channels, height, width = hidden_states.shape
        tokens = hidden_states.flatten(2).transpose(1, 2)
        update = self.ls2(self.mlp(tokens)).transpose(1, 2).reshape(batch, channels, height, width)
        return hidden_states + update


class SNPEfficientFormerAttentionBlock(nn.Module):
    """A 3D block on (N, tokens, C); the first one flattens the last stage's map into tokens (after the stage's
    strided convolution when the stage has only attention blocks)."""

    def __init__(self, config: SNPEfficientFormerConfig, layer_idx: int):
        super().__init__()
        spec = config.layer_specs()[layer_idx]
        dim = spec["width"]
        self.downsample = (
            SNPEfficientFormerDownsample(config, spec["downsample_from"], dim)
            if spec["downsample_from"] is not None
            else None
        )
        self.flatten = spec["flatten"]
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attention = SNPEfficientFormerAttention(config, dim, layer_idx)
        self.ls1 = SNPEfficientFormerLayerScale(dim, config.layer_scale_init_value)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = SNPEfficientFormerMlp(config, dim, layer_idx)
        self.ls2 = SNPEfficientFormerLayerScale(dim, config.layer_scale_init_value)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            hidden_states = self.downsample(hidden_states)
        if self.flatten:
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        hidden_states = hidden_states + self.ls1(self.attention(self.norm1(hidden_states)))
        return hidden_states + self.ls2(self.mlp(self.norm2(hidden_states)))


class SNPEfficientFormerPreTrainedModel(PreTrainedModel):
    config_class = SNPEfficientFormerConfig
    config: SNPEfficientFormerConfig
    base_model_prefix = "efficientformer"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False
    _no_split_modules = ["SNPEfficientFormerPoolingBlock", "SNPEfficientFormerAttentionBlock"]
    _supports_sdpa = True
    _supports_flash_attn = False  # an additive float bias and unequal query/key and value dims
    _supports_attention_backend = True

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
    def _init_weights(self, module: nn.Module):
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if getattr(module, "running_mean", None) is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, SNPEfficientFormerLayerScale):
            init.constant_(module.gamma, self.config.layer_scale_init_value)
        elif isinstance(module, SNPEfficientFormerAttention):
            init.zeros_(module.attention_biases)
            init.copy_(module.attention_bias_idxs, attention_bias_index(self.config.attention_grid()))


class SNPEfficientFormerModel(SNPEfficientFormerPreTrainedModel):
    """The EfficientFormer backbone: `last_hidden_state` = the normalized tokens of the last stage (batch, N, C),
    `pooler_output` = their mean."""

    def __init__(self, config: SNPEfficientFormerConfig):
        super().__init__(config)
        self.stem = SNPEfficientFormerStem(config)
        self.layers = nn.ModuleList(
            [
                SNPEfficientFormerAttentionBlock(config, idx)
                if spec["attention"]
                else SNPEfficientFormerPoolingBlock(config, idx)
                for idx, spec in enumerate(config.layer_specs())
            ]
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def forward(
        self, pixel_values: torch.Tensor | None = None, output_hidden_states: bool | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        if pixel_values is None:
            raise ValueError("You have to specify `pixel_values`.")
        expected_dtype = self.stem.conv1.weight.dtype
        hidden_states = self.stem(pixel_values.to(expected_dtype))
        all_hidden = [] if output_hidden_states else None
        for layer in self.layers:
            hidden_states = layer(hidden_states)
            if all_hidden is not None:
                all_hidden.append(hidden_states)
        sequence_output = self.norm(hidden_states)
        return BaseModelOutputWithPooling(
            last_hidden_state=sequence_output,
            pooler_output=sequence_output.mean(dim=1),
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
        )


class SNPEfficientFormerForImageClassification(SNPEfficientFormerPreTrainedModel):
    """EfficientFormer with a classifier on the mean token (and, with `use_distillation_head`, a distillation
    classifier whose logits are averaged with the first, as timm's distilled checkpoints do at inference)."""

    def __init__(self, config: SNPEfficientFormerConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.efficientformer = SNPEfficientFormerModel(config)
        head = (lambda: nn.Linear(config.hidden_size, config.num_labels)) if config.num_labels > 0 else nn.Identity
        self.classifier = head()
        self.distillation_classifier = head() if config.use_distillation_head else None
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput:
        outputs = self.efficientformer(pixel_values, output_hidden_states=output_hidden_states)
        pooled = outputs.pooler_output
        logits = self.classifier(pooled)
        if self.distillation_classifier is not None:
            logits = (logits + self.distillation_classifier(pooled)) / 2
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


__all__ = [
    "SNPEfficientFormerPreTrainedModel",
    "SNPEfficientFormerModel",
    "SNPEfficientFormerForImageClassification",
]
