"""optimum-snp: SNP (Structured Neuron-level Pruning, ECCV 2024) for Hugging Face transformers: ViT / DeiT image
models and BERT-family text encoders.

Importing the package registers the pruned model families with the transformers Auto classes (each architecture's
adapter does it when it is registered) and makes their save / load / push carry the pruning files and model card.
"""

from .accounting import ModelSize, model_size, model_size_of
from .adapters import (
    ArchitectureAdapter,
    BertAdapter,
    DeiTAdapter,
    ViTAdapter,
    get_adapter,
    register_adapter,
    supported_model_classes,
)
from .artifacts import record_results
from .config import SNPConfig
from .gradual import GradualPruningCallback, gradual_prune
from .hub import HubPushError, push_pruned_model
from .layer_dims import LayerDims
from .models import (
    SNPDeiTConfig,
    SNPDeiTForImageClassification,
    SNPDeiTForImageClassificationWithTeacher,
    SNPDeiTModel,
    SNPViTConfig,
    SNPViTForImageClassification,
    SNPViTModel,
)
from .plan import LayerPlan, PruningPlan, build_plan, plan_from_kept_dims, plan_from_scores
from .pruner import SNPPruner
from .ratios import PruningRatios, available_ratio_tables, load_ratio_table
from .slicing import apply_plan
from .training import SNPDistillationTrainer, SNPTrainingArguments
from .utils import retain_freed_memory
from .version import __version__


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
    "ArchitectureAdapter",
    "BertAdapter",
    "DeiTAdapter",
    "ViTAdapter",
    "register_adapter",
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
    "retain_freed_memory",
]
