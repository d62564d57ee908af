"""DistilBERT (transformers' stock classes and the SNP-pruned family): post-LayerNorm blocks with other module names
(`attention.{q_lin,k_lin,v_lin,out_lin}`, `sa_layer_norm`, `ffn.lin1/lin2`, `output_layer_norm`) and other config
fields (`dim`, `n_heads`, `hidden_dim`); query/key, value, MLP and head groups, hidden channels kept."""

from __future__ import annotations

from torch import nn

from ..layer_dims import LayerDims, ModelSize
from ..models.configuration_snp_distilbert import SNPDistilBertConfig
from ..models.modeling_snp_distilbert import (
    SNPDistilBertForMaskedLM,
    SNPDistilBertForQuestionAnswering,
    SNPDistilBertForSequenceClassification,
    SNPDistilBertForTokenClassification,
    SNPDistilBertModel,
)
from . import register_adapter
from .text import TextEncoderAdapter, text_snp_classes


class DistilBertAdapter(TextEncoderAdapter):
    """transformers' DistilBERT (`DistilBertModel` and its sequence / token classification, question answering and
    masked-LM heads) and its SNP-pruned family."""

    architecture = "distilbert"
    model_types = ("distilbert", "snp_distilbert")
    base_model_prefix = "distilbert"
    snp_config_class = SNPDistilBertConfig
    snp_classes = text_snp_classes(
        "DistilBert",
        {
            "Model": SNPDistilBertModel,
            "ForSequenceClassification": SNPDistilBertForSequenceClassification,
            "ForTokenClassification": SNPDistilBertForTokenClassification,
            "ForQuestionAnswering": SNPDistilBertForQuestionAnswering,
            "ForMaskedLM": SNPDistilBertForMaskedLM,
        },
    )
    uses_token_type_ids = False

    def base_model(self) -> nn.Module:
        return self.model if self.class_name.endswith("Model") else self.model.distilbert

    def layers(self) -> nn.ModuleList:
        return self.base_model().transformer.layer

    def layer_modules(self, idx: int) -> dict[str, nn.Module]:
        layer = self.layer(idx)
        att = layer.attention
        return {
            "q_proj": att.q_lin,
            "k_proj": att.k_lin,
            "v_proj": att.v_lin,
            "o_proj": att.out_lin,
            "attention": att,
            "attention_norm": layer.sa_layer_norm,
            "fc1": layer.ffn.lin1,
            "fc2": layer.ffn.lin2,
            "output_norm": layer.output_layer_norm,
        }

    def attention_scaling(self, idx: int) -> float:
        attention = self.layer_modules(idx)["attention"]
        scaling = getattr(attention, "scaling", None)
        return float(scaling if scaling is not None else (self.config.dim // self.config.n_heads) ** -0.5)

    @classmethod
    def stock_dims(cls, config) -> LayerDims:
        head_dim = config.dim // config.n_heads
        return LayerDims(config.n_heads, head_dim, head_dim, config.hidden_dim)

    def pruned_fields(self, hidden_size: int) -> dict:
        return {"dim": hidden_size}

    @classmethod
    def embedding_size(cls, config, hidden_size: int, tokens: int) -> ModelSize:
        d = hidden_size
        return ModelSize(params=(config.vocab_size + config.max_position_embeddings) * d + 2 * d, macs=0)

    @classmethod
    def head_size(cls, config, class_name: str, hidden_size: int, tokens: int) -> ModelSize:
        stock, d, labels = cls.stock_name(class_name), hidden_size, config.num_labels
        if stock.endswith("ForSequenceClassification"):  # pre_classifier + classifier on the first token
            return ModelSize(d * d + d + d * labels + labels, d * d + d * labels)
        if stock.endswith("ForTokenClassification") or stock.endswith("ForQuestionAnswering"):
            return ModelSize(d * labels + labels, tokens * d * labels)
        if stock.endswith("ForMaskedLM"):  # transform + LayerNorm, projector tied to the word embeddings
            vocab = config.vocab_size
            return ModelSize(d * d + d + 2 * d + vocab, tokens * (d * d + d * vocab))
        if stock.endswith("Model"):
            return ModelSize(0, 0)
        raise ValueError(f"Cannot count the size of architecture {class_name!r}.")


register_adapter(DistilBertAdapter)

__all__ = ["DistilBertAdapter"]
