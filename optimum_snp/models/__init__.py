"""The SNP-pruned model families (configs + modeling). Each file pair imports only transformers and its siblings, so
it can be copied next to a checkpoint for `trust_remote_code=True`; the architectures' adapters register them with
the transformers Auto classes (`optimum_snp.adapters.register_adapter`)."""

from .configuration_snp import SNPDeiTConfig, SNPViTConfig
from .configuration_snp_bert import SNPBertConfig, SNPRobertaConfig, SNPXLMRobertaConfig
from .configuration_snp_efficientformer import SNPEfficientFormerConfig
from .modeling_snp import (
    SNPDeiTForImageClassification,
    SNPDeiTForImageClassificationWithTeacher,
    SNPDeiTModel,
    SNPDeiTPreTrainedModel,
    SNPViTForImageClassification,
    SNPViTModel,
    SNPViTPreTrainedModel,
)
from .modeling_snp_bert import (
    SNPBertForMaskedLM,
    SNPBertForQuestionAnswering,
    SNPBertForSequenceClassification,
    SNPBertForTokenClassification,
    SNPBertModel,
    SNPBertPreTrainedModel,
    SNPRobertaForMaskedLM,
    SNPRobertaForQuestionAnswering,
    SNPRobertaForSequenceClassification,
    SNPRobertaForTokenClassification,
    SNPRobertaModel,
    SNPXLMRobertaModel,
)
from .modeling_snp_efficientformer import (
    SNPEfficientFormerForImageClassification,
    SNPEfficientFormerModel,
    SNPEfficientFormerPreTrainedModel,
)


__all__ = [
    "SNPViTConfig",
    "SNPDeiTConfig",
    "SNPBertConfig",
    "SNPRobertaConfig",
    "SNPXLMRobertaConfig",
    "SNPEfficientFormerConfig",
    "SNPEfficientFormerPreTrainedModel",
    "SNPEfficientFormerModel",
    "SNPEfficientFormerForImageClassification",
    "SNPViTPreTrainedModel",
    "SNPViTModel",
    "SNPViTForImageClassification",
    "SNPDeiTPreTrainedModel",
    "SNPDeiTModel",
    "SNPDeiTForImageClassification",
    "SNPDeiTForImageClassificationWithTeacher",
    "SNPBertPreTrainedModel",
    "SNPBertModel",
    "SNPBertForSequenceClassification",
    "SNPBertForTokenClassification",
    "SNPBertForQuestionAnswering",
    "SNPBertForMaskedLM",
    "SNPRobertaModel",
    "SNPRobertaForSequenceClassification",
    "SNPRobertaForTokenClassification",
    "SNPRobertaForQuestionAnswering",
    "SNPRobertaForMaskedLM",
    "SNPXLMRobertaModel",
]
