# Copyright 2026 The optimum-snp authors. Licensed under the Apache License, Version 2.0.
"""SNP-pruned BERT / RoBERTa / XLM-RoBERTa encoders: the stock architectures with per-layer dimensions.

Parameter names are identical to transformers' `Bert*` / `Roberta*` / `XLMRoberta*` models, so a pruned state dict
is the stock one with rows/columns removed (and an unpruned SNP model loads a stock state dict with `strict=True`).
Layer `i` reads `config.num_heads_per_layer[i]`, `config.qk_head_dims[i]`, `config.v_head_dims[i]` and
`config.intermediate_sizes[i]`; the hidden size (residual stream) is the stock one. Attention keeps the ORIGINAL
logit scale (`config.original_head_dim ** -0.5`) and supports a value head dim different from the query/key head dim,
in eager and SDPA attention alike. Blocks are post-LayerNorm, exactly as in BERT. Only the encoder (bidirectional)
configuration is supported: no decoder / cross-attention / cache.

This file only uses sibling imports so that it can be copied next to a checkpoint for `trust_remote_code=True`.
"""

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPoolingAndCrossAttentions,
    MaskedLMOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import (
    BertEmbeddings,
    BertLMPredictionHead,
    BertOnlyMLMHead,
    BertPooler,
    eager_attention_forward,
)
from transformers.models.roberta.modeling_roberta import (
    RobertaClassificationHead,
    RobertaEmbeddings,
    RobertaLMHead,
    RobertaPooler,
)
from transformers.pytorch_utils import apply_chunking_to_forward
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_snp_bert import SNPBertConfig, SNPRobertaConfig, SNPXLMRobertaConfig


class SNPBertSelfAttention(nn.Module):
    """Multi-head self-attention of layer `layer_idx`, with its own heads, query/key dim and value dim."""

    def __init__(self, config: SNPBertConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_attention_heads = config.num_heads_per_layer[layer_idx]
        self.attention_head_size = config.qk_head_dims[layer_idx]
        self.v_head_dim = config.v_head_dims[layer_idx]
        # The logit scale of the unpruned model: pruning query/key dims must not rescale the attention scores.
        self.scaling = config.attention_scaling()
        self.is_causal = False

        qk_width = self.num_attention_heads * self.attention_head_size
        v_width = self.num_attention_heads * self.v_head_dim
        self.query = nn.Linear(config.hidden_size, qk_width)
        self.key = nn.Linear(config.hidden_size, qk_width)
        self.value = nn.Linear(config.hidden_size, v_width)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        heads, qk_dim, v_dim = self.num_attention_heads, self.attention_head_size, self.v_head_dim
        query_layer = self.query(hidden_states).view(*input_shape, heads, qk_dim).transpose(1, 2)
        key_layer = self.key(hidden_states).view(*input_shape, heads, qk_dim).transpose(1, 2)
        value_layer = self.value(hidden_states).view(*input_shape, heads, v_dim).transpose(1, 2)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        pad = qk_dim - v_dim
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
        if attn_output.shape[-1] != v_dim:  # padded above: (batch, tokens, heads, padded dim)
            attn_output = attn_output[..., :v_dim]
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return attn_output, attn_weights


class SNPBertSelfOutput(nn.Module):
    def __init__(self, config: SNPBertConfig, layer_idx: int):
        super().__init__()
        v_width = config.num_heads_per_layer[layer_idx] * config.v_head_dims[layer_idx]
        self.dense = nn.Linear(v_width, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(self.dense(hidden_states))
        return self.LayerNorm(hidden_states + input_tensor)


class SNPBertAttention(nn.Module):
    def __init__(self, config: SNPBertConfig, layer_idx: int):
        super().__init__()
        self.self = SNPBertSelfAttention(config, layer_idx)
        self.output = SNPBertSelfOutput(config, layer_idx)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attention_output, attn_weights = self.self(hidden_states, attention_mask, **kwargs)
        return self.output(attention_output, hidden_states), attn_weights


class SNPBertIntermediate(nn.Module):
    def __init__(self, config: SNPBertConfig, layer_idx: int):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_sizes[layer_idx])
        self.intermediate_act_fn = (
            ACT2FN[config.hidden_act] if isinstance(config.hidden_act, str) else config.hidden_act
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class SNPBertOutput(nn.Module):
    def __init__(self, config: SNPBertConfig, layer_idx: int):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_sizes[layer_idx], config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(self.dense(hidden_states))
        return self.LayerNorm(hidden_states + input_tensor)


class SNPBertLayer(GradientCheckpointingLayer):
    def __init__(self, config: SNPBertConfig, layer_idx: int):
        super().__init__()
        self.chunk_size_feed_forward = config.chunk_size_feed_forward
        self.seq_len_dim = 1
        self.attention = SNPBertAttention(config, layer_idx)
        self.intermediate = SNPBertIntermediate(config, layer_idx)
        self.output = SNPBertOutput(config, layer_idx)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        attention_output, _ = self.attention(hidden_states, attention_mask, **kwargs)
        return apply_chunking_to_forward(
            self.feed_forward_chunk, self.chunk_size_feed_forward, self.seq_len_dim, attention_output
        )

    def feed_forward_chunk(self, attention_output: torch.Tensor) -> torch.Tensor:
        return self.output(self.intermediate(attention_output), attention_output)


class SNPBertEncoder(nn.Module):
    def __init__(self, config: SNPBertConfig):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList([SNPBertLayer(config, i) for i in range(config.num_hidden_layers)])

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        for layer_module in self.layer:
            hidden_states = layer_module(hidden_states, attention_mask, **kwargs)
        return hidden_states


def _sequence_classification_loss(model, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss of transformers' `BertForSequenceClassification` (problem type inferred as there)."""
    labels = labels.to(logits.device)
    config, num_labels = model.config, model.num_labels
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif num_labels > 1 and labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        if num_labels == 1:
            return MSELoss()(logits.squeeze(), labels.squeeze())
        return MSELoss()(logits, labels)
    if config.problem_type == "single_label_classification":
        return CrossEntropyLoss()(logits.view(-1, num_labels), labels.view(-1))
    return BCEWithLogitsLoss()(logits, labels)


def _question_answering_loss(start_logits, end_logits, start_positions, end_positions) -> torch.Tensor:
    """The loss of transformers' `BertForQuestionAnswering`."""
    if start_positions.dim() > 1:
        start_positions = start_positions.squeeze(-1)
    if end_positions.dim() > 1:
        end_positions = end_positions.squeeze(-1)
    # start/end positions outside the inputs are ignored
    ignored_index = start_logits.size(1)
    start_positions = start_positions.clamp(0, ignored_index).to(start_logits.device)
    end_positions = end_positions.clamp(0, ignored_index).to(end_logits.device)
    loss_fct = CrossEntropyLoss(ignore_index=ignored_index)
    return (loss_fct(start_logits, start_positions) + loss_fct(end_logits, end_positions)) / 2


class SNPBertPreTrainedModel(PreTrainedModel):
    config_class = SNPBertConfig
    config: SNPBertConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BertEmbeddings", "RobertaEmbeddings", "SNPBertLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False  # flash kernels need equal q/k and v head dims
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": SNPBertLayer, "attentions": SNPBertSelfAttention}

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
        if isinstance(module, (BertLMPredictionHead, RobertaLMHead)):
            init.zeros_(module.bias)
        elif isinstance(module, (BertEmbeddings, RobertaEmbeddings)):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
            init.zeros_(module.token_type_ids)


class SNPBertModel(SNPBertPreTrainedModel):
    embeddings_class = BertEmbeddings
    pooler_class = BertPooler

    def __init__(self, config: SNPBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        if config.is_decoder or config.add_cross_attention:
            raise ValueError(
                f"{type(self).__name__} is an encoder: `is_decoder` and `add_cross_attention` must be False."
            )
        self.embeddings = self.embeddings_class(config)
        self.encoder = SNPBertEncoder(config)
        self.pooler = self.pooler_class(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPoolingAndCrossAttentions:
        # `use_cache` (filled from the config by `merge_with_config_defaults`) is accepted and ignored: an encoder has
        # no cache, and passing it down would make gradient-checkpointed layers warn about it.
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        embedding_output = self.embeddings(
            input_ids=input_ids, position_ids=position_ids, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds
        )
        attention_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=embedding_output, attention_mask=attention_mask
        )
        sequence_output = self.encoder(embedding_output, attention_mask, **kwargs)
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=sequence_output, pooler_output=pooled_output
        )


class SNPBertForSequenceClassification(SNPBertPreTrainedModel):
    def __init__(self, config: SNPBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = SNPBertModel(config)
        classifier_dropout = (
            config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        )
        self.dropout = nn.Dropout(classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = _sequence_classification_loss(self, logits, labels) if labels is not None else None
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class SNPBertForTokenClassification(SNPBertPreTrainedModel):
    def __init__(self, config: SNPBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        setattr(self, self.base_model_prefix, self._base_model_class(config, add_pooling_layer=False))
        classifier_dropout = (
            config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        )
        self.dropout = nn.Dropout(classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @property
    def _base_model_class(self):
        return SNPBertModel

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> TokenClassifierOutput:
        outputs = getattr(self, self.base_model_prefix)(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            loss = CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1))
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class SNPBertForQuestionAnswering(SNPBertPreTrainedModel):
    def __init__(self, config: SNPBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        setattr(self, self.base_model_prefix, self._base_model_class(config, add_pooling_layer=False))
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @property
    def _base_model_class(self):
        return SNPBertModel

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        **kwargs,
    ) -> QuestionAnsweringModelOutput:
        outputs = getattr(self, self.base_model_prefix)(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        logits = self.qa_outputs(outputs.last_hidden_state)
        start_logits, end_logits = logits.split(1, dim=-1)
        start_logits = start_logits.squeeze(-1).contiguous()
        end_logits = end_logits.squeeze(-1).contiguous()
        total_loss = None
        if start_positions is not None and end_positions is not None:
            total_loss = _question_answering_loss(start_logits, end_logits, start_positions, end_positions)
        return QuestionAnsweringModelOutput(
            loss=total_loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class SNPBertForMaskedLM(SNPBertPreTrainedModel):
    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }

    def __init__(self, config: SNPBertConfig):
        super().__init__(config)
        self.bert = SNPBertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings):
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> MaskedLMOutput:
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        prediction_scores = self.cls(outputs.last_hidden_state)
        masked_lm_loss = None
        if labels is not None:  # -100 = ignored (padding) token
            labels = labels.to(prediction_scores.device)
            masked_lm_loss = CrossEntropyLoss()(prediction_scores.view(-1, self.config.vocab_size), labels.view(-1))
        return MaskedLMOutput(
            loss=masked_lm_loss,
            logits=prediction_scores,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


# ---- RoBERTa: RoBERTa embeddings (padding-aware positions), classification head on <s>, `lm_head` ---------------


class SNPRobertaPreTrainedModel(SNPBertPreTrainedModel):
    config_class = SNPRobertaConfig
    config: SNPRobertaConfig
    base_model_prefix = "roberta"


class SNPRobertaModel(SNPRobertaPreTrainedModel, SNPBertModel):
    embeddings_class = RobertaEmbeddings
    pooler_class = RobertaPooler


class SNPRobertaForSequenceClassification(SNPRobertaPreTrainedModel):
    def __init__(self, config: SNPRobertaConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.roberta = self._base_model_class(config, add_pooling_layer=False)
        self.classifier = RobertaClassificationHead(config)
        self.post_init()

    @property
    def _base_model_class(self):
        return SNPRobertaModel

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        outputs = self.roberta(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        logits = self.classifier(outputs.last_hidden_state)
        loss = _sequence_classification_loss(self, logits, labels) if labels is not None else None
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class SNPRobertaForTokenClassification(SNPRobertaPreTrainedModel, SNPBertForTokenClassification):
    @property
    def _base_model_class(self):
        return SNPRobertaModel


class SNPRobertaForQuestionAnswering(SNPRobertaPreTrainedModel, SNPBertForQuestionAnswering):
    @property
    def _base_model_class(self):
        return SNPRobertaModel


class SNPRobertaForMaskedLM(SNPRobertaPreTrainedModel):
    _tied_weights_keys = {
        "lm_head.decoder.weight": "roberta.embeddings.word_embeddings.weight",
        "lm_head.decoder.bias": "lm_head.bias",
    }

    def __init__(self, config: SNPRobertaConfig):
        super().__init__(config)
        self.roberta = self._base_model_class(config, add_pooling_layer=False)
        self.lm_head = RobertaLMHead(config)
        self.post_init()

    @property
    def _base_model_class(self):
        return SNPRobertaModel

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head.decoder = new_embeddings

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> MaskedLMOutput:
        outputs = self.roberta(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        prediction_scores = self.lm_head(outputs.last_hidden_state)
        masked_lm_loss = None
        if labels is not None:  # -100 = ignored (padding) token
            labels = labels.to(prediction_scores.device)
            masked_lm_loss = CrossEntropyLoss()(prediction_scores.view(-1, self.config.vocab_size), labels.view(-1))
        return MaskedLMOutput(
            loss=masked_lm_loss,
            logits=prediction_scores,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


# ---- XLM-RoBERTa: the RoBERTa architecture under its own config / model type -------------------------------------


class SNPXLMRobertaPreTrainedModel(SNPRobertaPreTrainedModel):
    config_class = SNPXLMRobertaConfig
    config: SNPXLMRobertaConfig


class SNPXLMRobertaModel(SNPXLMRobertaPreTrainedModel, SNPRobertaModel):
    pass


class SNPXLMRobertaForSequenceClassification(SNPXLMRobertaPreTrainedModel, SNPRobertaForSequenceClassification):
    @property
    def _base_model_class(self):
        return SNPXLMRobertaModel


class SNPXLMRobertaForTokenClassification(SNPXLMRobertaPreTrainedModel, SNPRobertaForTokenClassification):
    @property
    def _base_model_class(self):
        return SNPXLMRobertaModel


class SNPXLMRobertaForQuestionAnswering(SNPXLMRobertaPreTrainedModel, SNPRobertaForQuestionAnswering):
    @property
    def _base_model_class(self):
        return SNPXLMRobertaModel


class SNPXLMRobertaForMaskedLM(SNPXLMRobertaPreTrainedModel, SNPRobertaForMaskedLM):
    @property
    def _base_model_class(self):
        return SNPXLMRobertaModel


__all__ = [
    "SNPBertPreTrainedModel",
    "SNPBertModel",
    "SNPBertForSequenceClassification",
    "SNPBertForTokenClassification",
    "SNPBertForQuestionAnswering",
    "SNPBertForMaskedLM",
    "SNPRobertaPreTrainedModel",
    "SNPRobertaModel",
    "SNPRobertaForSequenceClassification",
    "SNPRobertaForTokenClassification",
    "SNPRobertaForQuestionAnswering",
    "SNPRobertaForMaskedLM",
    "SNPXLMRobertaPreTrainedModel",
    "SNPXLMRobertaModel",
    "SNPXLMRobertaForSequenceClassification",
    "SNPXLMRobertaForTokenClassification",
    "SNPXLMRobertaForQuestionAnswering",
    "SNPXLMRobertaForMaskedLM",
]
