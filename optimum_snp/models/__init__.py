"""The SNP-pruned model family (configs + modeling), registered with the transformers Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .configuration_snp import SNPDeiTConfig, SNPViTConfig
from .modeling_snp import (
    SNPDeiTForImageClassification,
    SNPDeiTForImageClassificationWithTeacher,
    SNPDeiTModel,
    SNPDeiTPreTrainedModel,
    SNPViTForImageClassification,
    SNPViTModel,
    SNPViTPreTrainedModel,
)


def register_auto_classes() -> None:
    """Makes `AutoConfig` / `AutoModel` / `AutoModelForImageClassification` know the SNP models, and makes
    `save_pretrained` write `auto_map` plus these files so checkpoints also load with `trust_remote_code=True`."""
    AutoConfig.register(SNPViTConfig.model_type, SNPViTConfig, exist_ok=True)
    AutoConfig.register(SNPDeiTConfig.model_type, SNPDeiTConfig, exist_ok=True)
    AutoModel.register(SNPViTConfig, SNPViTModel, exist_ok=True)
    AutoModel.register(SNPDeiTConfig, SNPDeiTModel, exist_ok=True)
    AutoModelForImageClassification.register(SNPViTConfig, SNPViTForImageClassification, exist_ok=True)
    # like transformers' DeiT: the saved `architectures` picks between the two classification classes
    AutoModelForImageClassification.register(
        SNPDeiTConfig, (SNPDeiTForImageClassification, SNPDeiTForImageClassificationWithTeacher), exist_ok=True
    )
    SNPViTConfig.register_for_auto_class("AutoConfig")
    SNPDeiTConfig.register_for_auto_class("AutoConfig")
    SNPViTModel.register_for_auto_class("AutoModel")
    SNPDeiTModel.register_for_auto_class("AutoModel")
    for cls in (SNPViTForImageClassification, SNPDeiTForImageClassification, SNPDeiTForImageClassificationWithTeacher):
        cls.register_for_auto_class("AutoModelForImageClassification")


__all__ = [
    "SNPViTConfig",
    "SNPDeiTConfig",
    "SNPViTPreTrainedModel",
    "SNPViTModel",
    "SNPViTForImageClassification",
    "SNPDeiTPreTrainedModel",
    "SNPDeiTModel",
    "SNPDeiTForImageClassification",
    "SNPDeiTForImageClassificationWithTeacher",
    "register_auto_classes",
]
