"""BERT, RoBERTa and XLM-RoBERTa encoders (transformers' stock classes and the SNP-pruned family): post-LayerNorm
blocks (`attention.self.{query,key,value}`, `attention.output.dense` + LayerNorm, `intermediate.dense`,
`output.dense` + LayerNorm); query/key, value, MLP and head groups (SNP_METHOD section 2), hidden channels kept.
"""

from __future__ import annotations

from torch import nn

from ..layer_dims import ModelSize
from ..models.configuration_snp_bert import SNPBertConfig, SNPRobertaConfig, SNPXLMRobertaConfig
from ..models.modeling_snp_bert import (
    SNPBertForMaskedLM,
    SNPBertForQuestionAnswering,
    SNPBertForSequenceClassification,
    SNPBertForTokenClassification,
    SNPBertModel,
    SNPRobertaForMaskedLM,
    SNPRobertaForQuestionAnswering,
    SNPRobertaForSequenceClassification,
    SNPRobertaForTokenClassification,
    SNPRobertaModel,
    SNPXLMRobertaForMaskedLM,
    SNPXLMRobertaForQuestionAnswering,
    SNPXLMRobertaForSequenceClassification,
    SNPXLMRobertaForTokenClassification,
    SNPXLMRobertaModel,
)
from . import register_adapter
from .text import TextEncoderAdapter, text_snp_classes


class BertAdapter(TextEncoderAdapter):
    """transformers' BERT (`BertModel` and its sequence / token classification, question answering and masked-LM
    heads) and its SNP-pruned family."""

    architecture = "bert"
    model_types = ("bert", "snp_bert")
    base_model_prefix = "bert"
    snp_config_class = SNPBertConfig
    snp_classes = text_snp_classes(
        "Bert",
        {
            "Model": SNPBertModel,
            "ForSequenceClassification": SNPBertForSequenceClassification,
            "ForTokenClassification": SNPBertForTokenClassification,
            "ForQuestionAnswering": SNPBertForQuestionAnswering,
            "ForMaskedLM": SNPBertForMaskedLM,
        },
    )
    pooler_in_sequence_classifier = True  # BERT classifies the pooler's output; RoBERTa has its own head

    def base_model(self) -> nn.Module:
        return self.model if self.class_name.endswith("Model") else getattr(self.model, self.base_model_prefix)

    def layers(self) -> nn.ModuleList:
        return self.base_model().encoder.layer

    def layer_modules(self, idx: int) -> dict[str, nn.Module]:
        layer = self.layer(idx)
        return {
            "q_proj": layer.attention.self.query,
            "k_proj": layer.attention.self.key,
            "v_proj": layer.attention.self.value,
            "o_proj": layer.attention.output.dense,
            "attention": layer.attention.self,
            "attention_norm": layer.attention.output.LayerNorm,
            "fc1": layer.intermediate.dense,
            "fc2": layer.output.dense,
            "output_norm": layer.output.LayerNorm,
        }

    def attention_scaling(self, idx: int) -> float:
        attention = self.layer_modules(idx)["attention"]
        return float(getattr(attention, "scaling", None) or attention.attention_head_size**-0.5)

    @classmethod
    def embedding_size(cls, config, hidden_size: int, tokens: int) -> ModelSize:
        d = hidden_size
        tables = config.vocab_size + config.max_position_embeddings + config.type_vocab_size
        return ModelSize(params=tables * d + 2 * d, macs=0)  # lookups and a LayerNorm: no MACs

    @classmethod
    def head_size(cls, config, class_name: str, hidden_size: int, tokens: int) -> ModelSize:
        stock, d = cls.stock_name(class_name), hidden_size
        labels = config.num_labels
        pooler = ModelSize(d * d + d, d * d)  # one dense on the first token of each sequence
        if stock.endswith("ForSequenceClassification"):
            if cls.pooler_in_sequence_classifier:
                return pooler + ModelSize(d * labels + labels, d * labels)
            return ModelSize(d * d + d + d * labels + labels, d * d + d * labels)  # dense + out_proj on one token
        if stock.endswith("ForTokenClassification") or stock.endswith("ForQuestionAnswering"):
            return ModelSize(d * labels + labels, tokens * d * labels)
        if stock.endswith("ForMaskedLM"):  # transform dense + LayerNorm, decoder tied to the word embeddings
            vocab = config.vocab_size
            return ModelSize(d * d + d + 2 * d + vocab, tokens * (d * d + d * vocab))
        if stock.endswith("Model"):
            return pooler
        raise ValueError(f"Cannot count the size of architecture {class_name!r}.")


class RobertaAdapter(BertAdapter):
    """transformers' RoBERTa and its SNP-pruned family (RoBERTa's classification head replaces BERT's pooler)."""

    architecture = "roberta"
    model_types = ("roberta", "snp_roberta")
    base_model_prefix = "roberta"
    snp_config_class = SNPRobertaConfig
    snp_classes = text_snp_classes(
        "Roberta",
        {
            "Model": SNPRobertaModel,
            "ForSequenceClassification": SNPRobertaForSequenceClassification,
            "ForTokenClassification": SNPRobertaForTokenClassification,
            "ForQuestionAnswering": SNPRobertaForQuestionAnswering,
            "ForMaskedLM": SNPRobertaForMaskedLM,
        },
    )
    pooler_in_sequence_classifier = False

    @classmethod
    def max_positions(cls, config) -> int:
        return config.max_position_embeddings - config.pad_token_id - 1  # positions start after the padding index


class XLMRobertaAdapter(RobertaAdapter):
    """transformers' XLM-RoBERTa (RoBERTa's code, another vocabulary) and its SNP-pruned family."""

    architecture = "xlm-roberta"
    model_types = ("xlm-roberta", "snp_xlm-roberta")
    snp_config_class = SNPXLMRobertaConfig
    snp_classes = text_snp_classes(
        "XLMRoberta",
        {
            "Model": SNPXLMRobertaModel,
            "ForSequenceClassification": SNPXLMRobertaForSequenceClassification,
            "ForTokenClassification": SNPXLMRobertaForTokenClassification,
            "ForQuestionAnswering": SNPXLMRobertaForQuestionAnswering,
            "ForMaskedLM": SNPXLMRobertaForMaskedLM,
        },
    )


for _adapter in (
    BertAdapter,
    RobertaAdapter,
    XLMRobertaAdapter,
):
    register_adapter(_adapter)


__all__ = ["BertAdapter", "RobertaAdapter", "XLMRobertaAdapter"]
