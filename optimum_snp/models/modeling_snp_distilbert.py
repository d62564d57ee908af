# Copyright 2026 The optimum-snp authors. Licensed under the Apache License, Version 2.0.
"""SNP-pruned DistilBERT models: the stock architecture with per-layer dimensions read from the config.

Parameter names are identical to transformers' `DistilBert*` models, so an unpruned stock state dict loads with
`strict=True` and a pruned state dict is the stock one with rows/columns removed. Layer `i` has
`config.num_heads_per_layer[i]` heads of query/key dim `config.qk_head_dims[i]` and value dim
`config.v_head_dims[i]`, and an FFN of width `config.intermediate_sizes[i]`; the hidden size `config.dim` is not
pruned. Attention keeps the ORIGINAL logit scale (`config.original_head_dim ** -0.5`) in eager and SDPA attention
alike.

This file only uses transformers / torch imports and its sibling config so that it can be copied next to a checkpoint
for `trust_remote_code=True`.
"""

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import get_activation
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    MaskedLMOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.distilbert.modeling_distilbert import (
    Embeddings,
    create_sinusoidal_embeddings,
    eager_attention_forward,
)
from transformers.pytorch_utils import apply_chunking_to_forward
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_snp_distilbert import SNPDistilBertConfig


class SNPDistilBertSelfAttention(nn.Module):
    """Multi-head self-attention of layer `layer_idx`, with its own heads, query/key dim and value dim."""

    def __init__(self, config: SNPDistilBertConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.n_heads = config.num_heads_per_layer[layer_idx]
        self.dim = config.dim
        self.attention_head_size = config.qk_head_dims[layer_idx]
        self.v_head_size = config.v_head_dims[layer_idx]
        # The logit scale of the unpruned model: pruning query/key dims must not rescale the attention scores.
        self.scaling = config.attention_scaling()

        qk_width = self.n_heads * self.attention_head_size
        v_width = self.n_heads * self.v_head_size
        self.q_lin = nn.Linear(in_features=config.dim, out_features=qk_width)
        self.k_lin = nn.Linear(in_features=config.dim, out_features=qk_width)
        self.v_lin = nn.Linear(in_features=config.dim, out_features=v_width)
        self.out_lin = nn.Linear(in_features=v_width, out_features=config.dim)

        self.dropout = nn.Dropout(p=config.attention_dropout)
        self.is_causal = False

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        heads = self.n_heads
        query_layer = self.q_lin(hidden_states).view(*input_shape, heads, self.attention_head_size).transpose(1, 2)
        key_layer = self.k_lin(hidden_states).view(*input_shape, heads, self.attention_head_size).transpose(1, 2)
        value_layer = self.v_lin(hidden_states).view(*input_shape, heads, self.v_head_size).transpose(1, 2)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        pad = self.attention_head_size - self.v_head_size
        if pad and self.config._attn_implementation == "sdpa" and hidden_states.device.type == "cpu":
            # PyTorch's fused CPU SDPA kernel needs equal query/key and value head dims; otherwise SDPA takes a much
            # slower path. Zero-padding the narrower side is exact: zero query/key columns add nothing to the scores,
            # zero value columns give zero outputs, which are cut off below.
            if pad > 0:
                value_layer = nn.functional.pad(value_layer, (0, pad))
            else:
                query_layer = nn.functional.pad(query_layer, (0, -pad))
                key_layer = nn.functional.pad(key_layer, (0, -pad))
        attn_output, attn_weights = attention_interface(
            self,
            query_layer,
            key_layer,
            value_layer,
            attention_mask,
            dropout=0.0 if not self.training else self.dropout.p,
            scaling=self.scaling,
            **kwargs,
        )
        if attn_output.shape[-1] != self.v_head_size:  # padded above: (batch, tokens, heads, padded dim)
            attn_output = attn_output[..., : self.v_head_size]
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.out_lin(attn_output), attn_weights


class SNPDistilBertFFN(nn.Module):
    """The FFN of layer `layer_idx`, of width `config.intermediate_sizes[layer_idx]`."""

    def __init__(self, config: SNPDistilBertConfig, layer_idx: int):
        super().__init__()
        self.dropout = nn.Dropout(p=config.dropout)
        self.chunk_size_feed_forward = config.chunk_size_feed_forward
        self.seq_len_dim = 1
        self.lin1 = nn.Linear(in_features=config.dim, out_features=config.intermediate_sizes[layer_idx])
        self.lin2 = nn.Linear(in_features=config.intermediate_sizes[layer_idx], out_features=config.dim)
        self.activation = get_activation(config.activation)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return apply_chunking_to_forward(self.ff_chunk, self.chunk_size_feed_forward, self.seq_len_dim, input)

    def ff_chunk(self, input: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.lin2(self.activation(self.lin1(input))))


class SNPDistilBertTransformerBlock(GradientCheckpointingLayer):
    """A post-LayerNorm DistilBERT block (attention, residual + LayerNorm, FFN, residual + LayerNorm)."""

    def __init__(self, config: SNPDistilBertConfig, layer_idx: int):
        super().__init__()
        self.attention = SNPDistilBertSelfAttention(config, layer_idx)
        self.sa_layer_norm = nn.LayerNorm(normalized_shape=config.dim, eps=1e-12)
        self.ffn = SNPDistilBertFFN(config, layer_idx)
        self.output_layer_norm = nn.LayerNorm(normalized_shape=config.dim, eps=1e-12)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        attention_output, _ = self.attention(hidden_states, attention_mask=attention_mask, **kwargs)
        attention_output = self.sa_layer_norm(attention_output + hidden_states)
        ffn_output = self.ffn(attention_output)
        return self.output_layer_norm(ffn_output + attention_output)


class SNPDistilBertTransformer(nn.Module):
    def __init__(self, config: SNPDistilBertConfig):
        super().__init__()
        self.n_layers = config.n_layers
        self.layer = nn.ModuleList([SNPDistilBertTransformerBlock(config, i) for i in range(config.n_layers)])
        self.gradient_checkpointing = False

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutput:
        for layer_module in self.layer:
            hidden_states = layer_module(hidden_states, attention_mask, **kwargs)
        return BaseModelOutput(last_hidden_state=hidden_states)


class SNPDistilBertPreTrainedModel(PreTrainedModel):
    config_class = SNPDistilBertConfig
    config: SNPDistilBertConfig
    base_model_prefix = "distilbert"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Embeddings", "SNPDistilBertTransformerBlock"]
    _supports_sdpa = True
    _supports_flash_attn = False  # flash kernels need equal q/k and v head dims
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {
        "hidden_states": SNPDistilBertTransformerBlock,
        "attentions": SNPDistilBertSelfAttention,
    }

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

    def get_position_embeddings(self) -> nn.Embedding:
        """The position embeddings (the task heads delegate to `self.distilbert`)."""
        return self.distilbert.get_position_embeddings()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        super()._init_weights(module)
        if isinstance(module, Embeddings):
            if self.config.sinusoidal_pos_embds:
                init.copy_(
                    module.position_embeddings.weight,
                    create_sinusoidal_embeddings(
                        self.config.max_position_embeddings,
                        self.config.dim,
                        torch.empty_like(module.position_embeddings.weight),
                    ),
                )
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))


class SNPDistilBertModel(SNPDistilBertPreTrainedModel):
    def __init__(self, config: SNPDistilBertConfig):
        super().__init__(config)
        self.embeddings = Embeddings(config)
        self.transformer = SNPDistilBertTransformer(config)
        self.post_init()

    def get_position_embeddings(self) -> nn.Embedding:
        return self.embeddings.position_embeddings

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, new_embeddings: nn.Embedding):
        self.embeddings.word_embeddings = new_embeddings

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        embeddings = self.embeddings(input_ids, inputs_embeds, position_ids)
        attention_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=embeddings, attention_mask=attention_mask
        )
        return self.transformer(hidden_states=embeddings, attention_mask=attention_mask, **kwargs)


class SNPDistilBertForMaskedLM(SNPDistilBertPreTrainedModel):
    _tied_weights_keys = {"vocab_projector.weight": "distilbert.embeddings.word_embeddings.weight"}

    def __init__(self, config: SNPDistilBertConfig):
        super().__init__(config)
        self.activation = get_activation(config.activation)
        self.distilbert = SNPDistilBertModel(config)
        self.vocab_transform = nn.Linear(config.dim, config.dim)
        self.vocab_layer_norm = nn.LayerNorm(config.dim, eps=1e-12)
        self.vocab_projector = nn.Linear(config.dim, config.vocab_size)
        self.post_init()
        self.mlm_loss_fct = nn.CrossEntropyLoss()

    def get_output_embeddings(self) -> nn.Module:
        return self.vocab_projector

    def set_output_embeddings(self, new_embeddings: nn.Module):
        self.vocab_projector = new_embeddings

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> MaskedLMOutput:
        outputs = self.distilbert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            return_dict=True,
            **kwargs,
        )
        prediction_logits = self.vocab_transform(outputs.last_hidden_state)
        prediction_logits = self.activation(prediction_logits)
        prediction_logits = self.vocab_layer_norm(prediction_logits)
        prediction_logits = self.vocab_projector(prediction_logits)

        mlm_loss = None
        if labels is not None:
            mlm_loss = self.mlm_loss_fct(prediction_logits.view(-1, prediction_logits.size(-1)), labels.view(-1))
        return MaskedLMOutput(
            loss=mlm_loss, logits=prediction_logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class SNPDistilBertForSequenceClassification(SNPDistilBertPreTrainedModel):
    def __init__(self, config: SNPDistilBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.distilbert = SNPDistilBertModel(config)
        self.pre_classifier = nn.Linear(config.dim, config.dim)
        self.classifier = nn.Linear(config.dim, config.num_labels)
        self.dropout = nn.Dropout(config.seq_classif_dropout)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        outputs = self.distilbert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            return_dict=True,
            **kwargs,
        )
        pooled_output = outputs.last_hidden_state[:, 0]  # (bs, dim)
        pooled_output = nn.functional.relu(self.pre_classifier(pooled_output))
        pooled_output = self.dropout(pooled_output)
        logits = self.classifier(pooled_output)  # (bs, num_labels)

        loss = None
        if labels is not None:
            if self.config.problem_type is None:
                if self.num_labels == 1:
                    self.config.problem_type = "regression"
                elif self.num_labels > 1 and (labels.dtype == torch.long or labels.dtype == torch.int):
                    self.config.problem_type = "single_label_classification"
                else:
                    self.config.problem_type = "multi_label_classification"

            if self.config.problem_type == "regression":
                loss_fct = MSELoss()
                if self.num_labels == 1:
                    loss = loss_fct(logits.squeeze(), labels.squeeze())
                else:
                    loss = loss_fct(logits, labels)
            elif self.config.problem_type == "single_label_classification":
                loss_fct = CrossEntropyLoss()
                loss = loss_fct(logits.view(-1, self.num_labels), labels.view(-1))
            elif self.config.problem_type == "multi_label_classification":
                loss_fct = BCEWithLogitsLoss()
                loss = loss_fct(logits, labels)

        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class SNPDistilBertForTokenClassification(SNPDistilBertPreTrainedModel):
    def __init__(self, config: SNPDistilBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.distilbert = SNPDistilBertModel(config)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.dim, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> TokenClassifierOutput:
        outputs = self.distilbert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            return_dict=True,
            **kwargs,
        )
        logits = self.classifier(self.dropout(outputs.last_hidden_state))

        loss = None
        if labels is not None:
            loss_fct = CrossEntropyLoss()
            loss = loss_fct(logits.view(-1, self.num_labels), labels.view(-1))
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class SNPDistilBertForQuestionAnswering(SNPDistilBertPreTrainedModel):
    def __init__(self, config: SNPDistilBertConfig):
        super().__init__(config)
        self.distilbert = SNPDistilBertModel(config)
        self.qa_outputs = nn.Linear(config.dim, config.num_labels)
        if config.num_labels != 2:
            raise ValueError(f"config.num_labels should be 2, but it is {config.num_labels}")
        self.dropout = nn.Dropout(config.qa_dropout)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> QuestionAnsweringModelOutput:
        outputs = self.distilbert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            return_dict=True,
            **kwargs,
        )
        logits = self.qa_outputs(self.dropout(outputs.last_hidden_state))  # (bs, max_query_len, 2)
        start_logits, end_logits = logits.split(1, dim=-1)
        start_logits = start_logits.squeeze(-1).contiguous()
        end_logits = end_logits.squeeze(-1).contiguous()

        total_loss = None
        if start_positions is not None and end_positions is not None:
            if len(start_positions.size()) > 1:
                start_positions = start_positions.squeeze(-1)
            if len(end_positions.size()) > 1:
                end_positions = end_positions.squeeze(-1)
            # start/end positions outside the model inputs are ignored
            ignored_index = start_logits.size(1)
            start_positions = start_positions.clamp(0, ignored_index)
            end_positions = end_positions.clamp(0, ignored_index)
            loss_fct = nn.CrossEntropyLoss(ignore_index=ignored_index)
            total_loss = (loss_fct(start_logits, start_positions) + loss_fct(end_logits, end_positions)) / 2

        return QuestionAnsweringModelOutput(
            loss=total_loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = [
    "SNPDistilBertPreTrainedModel",
    "SNPDistilBertModel",
    "SNPDistilBertForMaskedLM",
    "SNPDistilBertForSequenceClassification",
    "SNPDistilBertForTokenClassification",
    "SNPDistilBertForQuestionAnswering",
]
