"""Parameters and MACs of a model (stock or SNP) computed from its config alone.

MACs are multiply-accumulates of every Linear (and convolution) and of the two attention matmuls (Q K^T and A V)
for one input: one image, or one sequence of `input_size` tokens for text models; LayerNorm, softmax, activations
and bias additions are not counted (as in the paper and in `torch.utils.flop_counter`, which reports 2 FLOPs per
MAC). Transformer layers are counted by one formula (`layer_size`) for every architecture; embeddings, token count,
heads, and the layers of hybrid architectures (convolutions, per-stage widths) come from the architecture's adapter.
"""

from __future__ import annotations

from .adapters import adapter_class_for
from .layer_dims import LayerDims, ModelSize, transformer_layer_size


def layer_size(dims: LayerDims, hidden_size: int, tokens: int, qkv_bias: bool = True) -> ModelSize:
    """Params and MACs of one pre-norm transformer layer (attention, MLP, two LayerNorms) on `tokens` tokens."""
    return transformer_layer_size(dims, hidden_size, tokens, qkv_bias)


def layer_size_in(config, idx: int, dims: LayerDims, hidden_size: int | None = None, input_size=None) -> ModelSize:
    """Params and MACs of layer `idx` of the model `config` describes, with `dims` (the architecture's own count:
    uniform transformers use `layer_size`; hybrids add their convolutions and use each stage's width and grid)."""
    adapter_cls = adapter_class_for(config)
    tokens = adapter_cls.num_tokens(config, input_size)
    return adapter_cls.layer_size(
        config, idx, dims, hidden_size or config.hidden_size, tokens, adapter_cls.qkv_bias(config)
    )


def num_tokens(config, input_size=None) -> int:
    """Tokens per input: patches plus special tokens for images, `input_size` (default 128) for text."""
    return adapter_class_for(config).num_tokens(config, input_size)


def model_size(
    config,
    architecture: str | None = None,
    image_size=None,
    hidden_size: int | None = None,
    layer_dims: list[LayerDims] | None = None,
    sequence_length: int | None = None,
) -> ModelSize:
    """Params and MACs per input of the model `architecture` (class name, default `config.architectures[0]`).

    Works for stock configs and SNP configs (per-layer dims). `image_size` (images) or `sequence_length` (text)
    override the input size; `hidden_size` and `layer_dims` give the size the model would have with those dims.
    """
    adapter_cls = adapter_class_for(config)
    architecture = architecture or (getattr(config, "architectures", None) or [None])[0]
    if architecture is None:
        architecture = next(name for name in adapter_cls.snp_classes if not name.startswith("SNP"))
    d = hidden_size or config.hidden_size
    tokens = adapter_cls.num_tokens(config, image_size or sequence_length)
    size = adapter_cls.embedding_size(config, d, tokens)
    bias = adapter_cls.qkv_bias(config)
    for idx, dims in enumerate(layer_dims or adapter_cls.dims_from_config(config)):
        size = size + adapter_cls.layer_size(config, idx, dims, d, tokens, bias)
    return size + adapter_cls.head_size(config, architecture, d, tokens)


def architecture_of(model) -> str:
    """The stock class name of a model (`SNP` prefix dropped), which decides its heads."""
    name = type(model).__name__
    return name[3:] if name.startswith("SNP") else name


def model_size_of(model, image_size=None, sequence_length: int | None = None) -> ModelSize:
    """`model_size` of a model instance (its class decides the heads)."""
    return model_size(model.config, architecture_of(model), image_size, sequence_length=sequence_length)


__all__ = [
    "ModelSize",
    "architecture_of",
    "layer_size",
    "layer_size_in",
    "model_size",
    "model_size_of",
    "num_tokens",
]
