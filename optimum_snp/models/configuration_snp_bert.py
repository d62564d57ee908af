# Copyright 2026 The optimum-snp authors. Licensed under the Apache License, Version 2.0.
"""Configurations of SNP-pruned BERT / RoBERTa / XLM-RoBERTa text encoders.

Like the ViT/DeiT family (`configuration_snp.py`), every layer may have its own number of heads, query/key head
dim, value head dim and MLP width, given by one list per quantity (see [`SNPConfigMixin`]). The hidden size (the
residual stream) is not pruned for text models, so `hidden_size` keeps the stock value.

This file only uses sibling imports so that it can be copied next to a checkpoint for `trust_remote_code=True`.
"""

from huggingface_hub.dataclasses import strict
from transformers import BertConfig, RobertaConfig, XLMRobertaConfig

from .configuration_snp import SNPConfigMixin


@strict
class SNPBertConfig(SNPConfigMixin, BertConfig):
    r"""Configuration of an SNP-pruned BERT (`model_type="snp_bert"`); see [`SNPConfigMixin`] for the extra fields."""

    model_type = "snp_bert"


@strict
class SNPRobertaConfig(SNPConfigMixin, RobertaConfig):
    r"""Configuration of an SNP-pruned RoBERTa (`model_type="snp_roberta"`); see [`SNPConfigMixin`] for the extra
    fields."""

    model_type = "snp_roberta"


@strict
class SNPXLMRobertaConfig(SNPConfigMixin, XLMRobertaConfig):
    r"""Configuration of an SNP-pruned XLM-RoBERTa (`model_type="snp_xlm-roberta"`); see [`SNPConfigMixin`] for the
    extra fields."""

    model_type = "snp_xlm-roberta"


__all__ = ["SNPBertConfig", "SNPRobertaConfig", "SNPXLMRobertaConfig"]
