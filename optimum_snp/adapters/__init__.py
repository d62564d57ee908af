"""Architecture adapters: the one place that knows architectures, and their registry.

`get_adapter(model)` returns the adapter serving a model instance; `adapter_class_for(config)` the class serving a
config (for what needs no instance: sizes, Auto classes). `register_adapter(MyAdapter)` adds an architecture: it
fills the registry and registers the adapter's SNP model family with the transformers Auto classes (and for
`trust_remote_code=True`).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

import transformers
from torch import nn

from ..layer_dims import LayerDims
from .base import PER_LAYER_FIELDS, ArchitectureAdapter


ADAPTERS: dict[str, type[ArchitectureAdapter]] = {}
_ON_REGISTER: list[Callable[[type[ArchitectureAdapter]], None]] = []


def _register_auto_classes(adapter_cls: type[ArchitectureAdapter]) -> None:
    config_cls = adapter_cls.snp_config_class
    transformers.AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
    config_cls.register_for_auto_class("AutoConfig")
    by_auto: dict[str, list[type]] = {}
    for snp_cls, auto_name in adapter_cls.snp_classes.values():
        if snp_cls not in by_auto.setdefault(auto_name, []):
            by_auto[auto_name].append(snp_cls)
    for auto_name, classes in by_auto.items():
        # several classes for one Auto class (DeiT with and without teacher): the saved `architectures` picks one
        getattr(transformers, auto_name).register(
            config_cls, classes[0] if len(classes) == 1 else tuple(classes), exist_ok=True
        )
        for snp_cls in classes:
            snp_cls.register_for_auto_class(auto_name)


def register_adapter(adapter_cls: type[ArchitectureAdapter]) -> type[ArchitectureAdapter]:
    """Adds an architecture (usable as a class decorator)."""
    if not (isinstance(adapter_cls, type) and issubclass(adapter_cls, ArchitectureAdapter)):
        raise TypeError(f"register_adapter takes an ArchitectureAdapter subclass, got {adapter_cls!r}.")
    if not adapter_cls.model_types or adapter_cls.snp_config_class is None or not adapter_cls.snp_classes:
        raise ValueError(f"{adapter_cls.__name__} must set model_types, snp_config_class and snp_classes.")
    for model_type in adapter_cls.model_types:
        ADAPTERS[model_type] = adapter_cls
    _register_auto_classes(adapter_cls)
    for hook in _ON_REGISTER:
        hook(adapter_cls)
    return adapter_cls


def on_register(hook: Callable[[type[ArchitectureAdapter]], None]) -> None:
    """Calls `hook(adapter_cls)` for every registered adapter, now and on every later `register_adapter`."""
    _ON_REGISTER.append(hook)
    for adapter_cls in dict.fromkeys(ADAPTERS.values()):
        hook(adapter_cls)


def supported_model_classes() -> list[str]:
    return sorted({name for cls in set(ADAPTERS.values()) for name in cls.snp_classes})


def adapter_class_for(config) -> type[ArchitectureAdapter]:
    """The adapter class serving a config (or a `model_type` string)."""
    model_type = config if isinstance(config, str) else getattr(config, "model_type", None)
    adapter_cls = ADAPTERS.get(model_type)
    if adapter_cls is None:
        raise ValueError(
            f"optimum-snp does not know model_type={model_type!r}. Supported: {sorted(ADAPTERS)}; add an architecture "
            "with optimum_snp.register_adapter."
        )
    return adapter_cls


def adapter_class_for_architecture(class_name: str | None) -> type[ArchitectureAdapter] | None:
    """The adapter class serving the (stock or SNP) model class named `class_name`, or None."""
    for adapter_cls in dict.fromkeys(ADAPTERS.values()):
        if class_name in adapter_cls.snp_classes:
            return adapter_cls
    return None


def get_adapter(model: nn.Module) -> ArchitectureAdapter:
    """The adapter of `model`, or a ValueError that lists the supported model classes."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    adapter_cls = ADAPTERS.get(model_type)
    if adapter_cls is None or not adapter_cls.serves(model):
        raise ValueError(
            f"optimum-snp cannot prune {type(model).__name__} (model_type={model_type!r}). Supported model classes: "
            f"{', '.join(supported_model_classes())}. Load the checkpoint with one of them (e.g. "
            "AutoModelForImageClassification for a ViT/DeiT classifier, AutoModel for a BERT encoder)."
        )
    return adapter_cls(model)


# Every module of this package except the shared bases is an architecture: importing it registers its adapters (each
# ends with `register_adapter(...)`), so adding an architecture is adding a file here (plus its model family).
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module not in ("base", "text"):
        importlib.import_module(f"{__name__}.{_module}")

from .bert import BertAdapter, RobertaAdapter, XLMRobertaAdapter  # noqa: E402
from .vit import DeiTAdapter, ViTAdapter  # noqa: E402


__all__ = [
    "ADAPTERS",
    "PER_LAYER_FIELDS",
    "ArchitectureAdapter",
    "BertAdapter",
    "DeiTAdapter",
    "LayerDims",
    "RobertaAdapter",
    "ViTAdapter",
    "XLMRobertaAdapter",
    "adapter_class_for",
    "adapter_class_for_architecture",
    "get_adapter",
    "on_register",
    "register_adapter",
    "supported_model_classes",
]
