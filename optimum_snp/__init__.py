"""optimum-snp: SNP (Structured Neuron-level Pruning, ECCV 2024) for Hugging Face ViT / DeiT models.

Importing the package registers the pruned model family with the transformers Auto classes.
"""

from .accounting import ModelSize, model_size, model_size_of
from .adapters import DeiTAdapter, LayerDims, ViTAdapter, get_adapter, supported_model_classes
from .artifacts import record_results
from .config import SNPConfig
from .gradual import GradualPruningCallback, gradual_prune
from .hub import HubPushError, push_pruned_model
from .models import (
    SNPDeiTConfig,
    SNPDeiTForImageClassification,
    SNPDeiTForImageClassificationWithTeacher,
    SNPDeiTModel,
    SNPViTConfig,
    SNPViTForImageClassification,
    SNPViTModel,
    register_auto_classes,
)
from .plan import LayerPlan, PruningPlan, build_plan, plan_from_kept_dims, plan_from_scores
from .pruner import SNPPruner
from .ratios import PruningRatios, available_ratio_tables, load_ratio_table
from .slicing import apply_plan
from .training import SNPDistillationTrainer, SNPTrainingArguments
from .version import __version__


register_auto_classes()

__all__ = [
    "__version__",
    "SNPConfig",
    "SNPPruner",
    "HubPushError",
    "push_pruned_model",
    "record_results",
    "SNPDistillationTrainer",
    "GradualPruningCallback",
    "gradual_prune",
    "SNPTrainingArguments",
    "plan_from_kept_dims",
    "ModelSize",
    "model_size",
    "model_size_of",
    "DeiTAdapter",
    "ViTAdapter",
    "LayerDims",
    "get_adapter",
    "supported_model_classes",
    "SNPViTConfig",
    "SNPDeiTConfig",
    "SNPViTModel",
    "SNPViTForImageClassification",
    "SNPDeiTModel",
    "SNPDeiTForImageClassification",
    "SNPDeiTForImageClassificationWithTeacher",
    "LayerPlan",
    "PruningPlan",
    "build_plan",
    "plan_from_scores",
    "PruningRatios",
    "available_ratio_tables",
    "load_ratio_table",
    "apply_plan",
]
