"""timm's ViT and DeiT (`VisionTransformer`, `VisionTransformerDistilled`) -> transformers' ViT / DeiT, exactly.

| timm                                   | transformers                                                    |
|----------------------------------------|-----------------------------------------------------------------|
| `VisionTransformer` with a head        | `ViTForImageClassification` (`classifier` = `head`)             |
| `VisionTransformerDistilled` with heads| `DeiTForImageClassificationWithTeacher` (`cls_classifier` =     |
|                                        | `head`, `distillation_classifier` = `head_dist`; eval logits are|
|                                        | their mean in both)                                             |
| either with `num_classes=0`            | `ViTModel` / `DeiTModel`: `last_hidden_state` = timm's          |
|                                        | `forward_features`; timm's pooled features are                  |
|                                        | `last_hidden_state[:, 0]` (distilled: mean of tokens 0 and 1).  |
|                                        | The transformers pooler (dense + tanh) has no timm counterpart: |
|                                        | it keeps its fresh initialization.                              |
| `cls_token`, `dist_token`, `pos_embed` | `embeddings.cls_token`, `.distillation_token`,                  |
|                                        | `.position_embeddings`                                          |
| `patch_embed.proj`                     | `embeddings.patch_embeddings.projection`                        |
| `blocks.N.norm1` / `norm2`             | `layers.N.layernorm_before` / `layernorm_after`                 |
| `blocks.N.attn.qkv` (fused)            | `layers.N.attention.q_proj`, `k_proj`, `v_proj` (rows split in  |
|                                        | thirds, heads in the same order)                                |
| `blocks.N.attn.proj`                   | `layers.N.attention.o_proj`                                     |
| `blocks.N.mlp.fc1` / `fc2`             | `layers.N.mlp.fc1` / `fc2`                                      |
| `norm`                                 | `layernorm`                                                     |

The config carries `layer_norm_eps` (timm: 1e-6), image and patch size, channels, `qkv_bias`, the activation
(GELU, its tanh approximation or QuickGELU), the MLP width and the dropout rates. Missing biases (`proj_bias=False`)
become zero biases. Stochastic depth (`drop_path_rate`) and patch dropout act only in training and are not carried.

Everything else a timm ViT can be built with changes the function and has no transformers ViT/DeiT equivalent, so
it raises ValueError naming the option: pooling other than the class token (`global_pool`, `attn_pool`), no class
token, register tokens, `no_embed_class`, `pre_norm`, `fc_norm`, `final_norm=False`, `dynamic_img_size`,
`dynamic_img_pad`, layer scale (`init_values`), `qk_norm`, `scale_attn_norm` / `scale_mlp_norm`, gated attention,
another head size, block, attention, MLP, norm or activation class. They are read from the instance (its modules and
attributes), not from its name.
"""

from __future__ import annotations

import torch
from torch import nn

from .timm import register_timm_converter


# activation module class name (timm's own or torch's) -> transformers `hidden_act`
_ACTIVATIONS = {"GELU": "gelu", "GELUTanh": "gelu_pytorch_tanh", "QuickGELU": "quick_gelu"}


def _hidden_act(act: nn.Module) -> str | None:
    if isinstance(act, nn.GELU):
        return {"none": "gelu", "tanh": "gelu_pytorch_tanh"}.get(act.approximate)
    if type(act).__module__.startswith("timm."):
        return _ACTIVATIONS.get(type(act).__name__)
    return None


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


def _is_identity(module) -> bool:
    return module is None or isinstance(module, nn.Identity)


def _layer_norm_eps(norm, dim: int) -> float | None:
    """The eps of a LayerNorm over the last `dim` channels; None for any other norm."""
    if isinstance(norm, nn.LayerNorm) and tuple(norm.normalized_shape) == (dim,):
        return float(norm.eps)
    return None


def _unsupported_options(model: nn.Module, distilled: bool) -> list[str]:
    """Every option of `model` that transformers' ViT/DeiT cannot express, as 'option=value (why)' strings."""
    problems: list[str] = []
    add = problems.append
    headless = model.num_classes == 0
    global_pool = getattr(model, "global_pool", "token")
    if global_pool != "token" and not (headless and global_pool == ""):
        add(f"global_pool={global_pool!r} (transformers' ViT/DeiT read the class token: global_pool='token')")
    if getattr(model, "attn_pool", None) is not None:
        add(f"attn_pool={type(model.attn_pool).__name__} (attention pooling, global_pool='map'/'prr')")
    if getattr(model, "cls_token", None) is None or not getattr(model, "has_class_token", True):
        add("class_token=False (transformers' ViT/DeiT prepend a class token)")
    reg_tokens = getattr(model, "num_reg_tokens", 0) or 0
    if reg_tokens or getattr(model, "reg_token", None) is not None:
        add(f"reg_tokens={reg_tokens} (register tokens, num_reg_tokens / reg_token)")
    if getattr(model, "no_embed_class", False):
        add("no_embed_class=True (position embeddings that skip the class token)")
    if getattr(model, "pos_embed", None) is None:
        add("pos_embed='none' (no learned position embeddings)")
    if getattr(model, "dynamic_img_size", False):
        add("dynamic_img_size=True (position embeddings resampled to each input size)")
    if not _is_identity(getattr(model, "norm_pre", None)):
        add(f"pre_norm=True (norm_pre={type(model.norm_pre).__name__} after the embeddings)")
    if not _is_identity(getattr(model, "fc_norm", None)):
        add(f"fc_norm=True (fc_norm={type(model.fc_norm).__name__} after pooling)")
    dim = model.embed_dim
    if _is_identity(getattr(model, "norm", None)):
        if _is_identity(getattr(model, "fc_norm", None)):  # with fc_norm, timm moves the final norm after pooling
            add("final_norm=False (no norm after the blocks)")
    elif _layer_norm_eps(model.norm, dim) is None:
        add(f"norm_layer={type(model.norm).__name__} (final norm; transformers uses LayerNorm)")

    patch_embed = model.patch_embed
    proj = getattr(patch_embed, "proj", None)
    if type(patch_embed).__name__ != "PatchEmbed" or not isinstance(proj, nn.Conv2d):
        add(f"embed_layer={type(patch_embed).__name__} (transformers uses a strided Conv2d patch embedding)")
    else:
        if tuple(proj.kernel_size) != tuple(proj.stride) or any(proj.padding) or proj.groups != 1:
            add(f"patch_embed.proj=Conv2d(kernel={proj.kernel_size}, stride={proj.stride}, padding={proj.padding})")
        if not _is_identity(getattr(patch_embed, "norm", None)):
            add(f"embed_norm_layer={type(patch_embed.norm).__name__} (a norm in the patch embedding)")
        if getattr(patch_embed, "dynamic_img_pad", False):
            add("dynamic_img_pad=True (padding to a multiple of the patch size)")
    if distilled and getattr(model, "dist_token", None) is None:
        add("dist_token=None (a distilled DeiT without its distillation token)")

    heads = [getattr(model, "head", None)] + ([getattr(model, "head_dist", None)] if distilled else [])
    if not all(isinstance(h, nn.Linear) for h in heads) and not all(_is_identity(h) for h in heads):
        add(f"head={', '.join(type(h).__name__ for h in heads)} (transformers' classifiers are single Linear layers)")

    seen: set[str] = set()

    def add_once(text: str) -> None:  # once per option, whatever the number of blocks that have it
        key = text.split("=", 1)[0].split(" (", 1)[0]
        if key not in seen:
            seen.add(key)
            add(text)

    eps, qkv_bias, width = set(), set(), set()
    for idx, block in enumerate(model.blocks):
        where = f"blocks.{idx}"
        if type(block).__name__ != "Block":
            add_once(f"block_fn={type(block).__name__} (transformers' ViT layers are pre-norm Blocks)")
            continue
        for name in ("ls1", "ls2"):
            if not _is_identity(getattr(block, name, None)):
                add_once(f"init_values (layer scale: {where}.{name} is {type(getattr(block, name)).__name__})")
        for name in ("norm1", "norm2"):
            value = _layer_norm_eps(getattr(block, name, None), dim)
            if value is None:
                add_once(f"norm_layer={type(getattr(block, name, None)).__name__} (transformers uses LayerNorm)")
            else:
                eps.add(value)
        attn, mlp = block.attn, block.mlp
        if type(attn).__name__ != "Attention" or not isinstance(getattr(attn, "qkv", None), nn.Linear):
            add_once(f"attn_layer={type(attn).__name__} (transformers' ViT attention is standard fused-qkv MHA)")
        else:
            if not (_is_identity(getattr(attn, "q_norm", None)) and _is_identity(getattr(attn, "k_norm", None))):
                add_once("qk_norm=True (a norm on queries and keys)")
            if not _is_identity(getattr(attn, "norm", None)):
                add_once("scale_attn_norm=True (a norm before the attention output projection)")
            if getattr(attn, "gate", None) is not None:
                add_once("gated=True (gated attention output)")
            head_dim = getattr(attn, "head_dim", dim // attn.num_heads)
            if attn.num_heads * head_dim != dim or attn.qkv.out_features != 3 * dim:
                add_once(f"attn_head_dim={head_dim} (heads x head_dim = {attn.num_heads * head_dim} != {dim})")
            elif abs(float(getattr(attn, "scale", head_dim**-0.5)) - head_dim**-0.5) > 1e-12:
                add_once(f"attention scale={attn.scale} (transformers uses head_dim ** -0.5)")
            elif not isinstance(getattr(attn, "proj", None), nn.Linear) or attn.proj.out_features != dim:
                add_once(f"attention proj={type(getattr(attn, 'proj', None)).__name__} (expected Linear to {dim})")
            qkv_bias.add(attn.qkv.bias is not None)
        if type(mlp).__name__ != "Mlp" or not (isinstance(mlp.fc1, nn.Linear) and isinstance(mlp.fc2, nn.Linear)):
            add_once(f"mlp_layer={type(mlp).__name__} (transformers' ViT MLP is Linear -> activation -> Linear)")
        else:
            if not _is_identity(getattr(mlp, "norm", None)):
                add_once("scale_mlp_norm=True (a norm inside the MLP)")
            if _hidden_act(mlp.act) is None:
                add_once(f"act_layer={type(mlp.act).__name__} (supported: GELU, GELUTanh, QuickGELU)")
            width.add(mlp.fc1.out_features)
    if len(eps) > 1:
        add(f"norm eps={sorted(eps)} (transformers has one layer_norm_eps)")
    if len(qkv_bias) > 1:
        add("qkv_bias differs between blocks")
    if len(width) > 1:
        add(f"mlp widths={sorted(width)} differ between blocks (transformers' stock ViT has one intermediate_size)")
    return problems


def _config(model: nn.Module, distilled: bool):
    from transformers import DeiTConfig, ViTConfig

    block = model.blocks[0]
    attn, mlp = block.attn, block.mlp
    image_size, patch_size = _pair(model.patch_embed.img_size), _pair(model.patch_embed.patch_size)
    num_labels = model.head.out_features if isinstance(model.head, nn.Linear) else 0
    fields = dict(
        hidden_size=model.embed_dim,
        num_hidden_layers=len(model.blocks),
        num_attention_heads=attn.num_heads,
        intermediate_size=mlp.fc1.out_features,
        hidden_act=_hidden_act(mlp.act),
        hidden_dropout_prob=float(attn.proj_drop.p) if isinstance(attn.proj_drop, nn.Dropout) else 0.0,
        attention_probs_dropout_prob=float(attn.attn_drop.p) if isinstance(attn.attn_drop, nn.Dropout) else 0.0,
        layer_norm_eps=float(model.norm.eps),
        image_size=image_size[0] if image_size[0] == image_size[1] else list(image_size),
        patch_size=patch_size[0] if patch_size[0] == patch_size[1] else list(patch_size),
        num_channels=model.patch_embed.proj.in_channels,
        qkv_bias=attn.qkv.bias is not None,
        encoder_stride=patch_size[0],
        num_labels=num_labels or 2,  # a headless model keeps transformers' default labels, which nothing reads
    )
    return (DeiTConfig if distilled else ViTConfig)(**fields)


def convert_timm_vit(timm_model: nn.Module) -> nn.Module:
    """The transformers ViT / DeiT model equal to the timm `VisionTransformer` / `VisionTransformerDistilled`
    (eval-mode outputs equal up to float rounding), or a ValueError naming every option it cannot map."""
    from transformers import (
        DeiTForImageClassificationWithTeacher,
        DeiTModel,
        ViTForImageClassification,
        ViTModel,
    )

    distilled = type(timm_model).__name__ == "VisionTransformerDistilled"
    problems = _unsupported_options(timm_model, distilled)
    if problems:
        name = (getattr(timm_model, "pretrained_cfg", None) or {}).get("architecture") or type(timm_model).__name__
        raise ValueError(
            f"Cannot convert the timm model {name!r} to transformers' {'DeiT' if distilled else 'ViT'}: "
            + "; ".join(problems)
            + ". These options have no transformers ViT/DeiT equivalent: prune a timm ViT built without them, or "
            "convert the model to a supported transformers class yourself and pass that instance."
        )
    config = _config(timm_model, distilled)
    headless = not isinstance(timm_model.head, nn.Linear)
    if distilled:
        cls, prefix = (DeiTModel, "") if headless else (DeiTForImageClassificationWithTeacher, "deit.")
    else:
        cls, prefix = (ViTModel, "") if headless else (ViTForImageClassification, "vit.")
    model = cls(config)

    dim = config.hidden_size
    source = {name: t.detach() for name, t in timm_model.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    emb = prefix + "embeddings."
    state[emb + "cls_token"] = source["cls_token"]
    if distilled:
        state[emb + "distillation_token"] = source["dist_token"]
    state[emb + "position_embeddings"] = source["pos_embed"]

    def linear(target: str, module: nn.Module, weight: torch.Tensor | None = None, bias=None) -> None:
        weight = module.weight.detach() if weight is None else weight
        state[target + ".weight"] = weight
        if bias is None and getattr(module, "bias", None) is not None:
            bias = module.bias.detach()
        state[target + ".bias"] = bias if bias is not None else weight.new_zeros(weight.shape[0])

    def norm(target: str, module: nn.LayerNorm) -> None:
        state[target + ".weight"] = module.weight.detach() if module.weight is not None else torch.ones(dim)
        bias = getattr(module, "bias", None)
        state[target + ".bias"] = bias.detach() if bias is not None else torch.zeros(dim)

    linear(emb + "patch_embeddings.projection", timm_model.patch_embed.proj)
    for idx, block in enumerate(timm_model.blocks):
        layer = f"{prefix}layers.{idx}."
        norm(layer + "layernorm_before", block.norm1)
        qkv = block.attn.qkv
        weights = qkv.weight.detach().chunk(3, dim=0)
        biases = qkv.bias.detach().chunk(3, dim=0) if qkv.bias is not None else (None, None, None)
        for proj, weight, bias in zip(("q_proj", "k_proj", "v_proj"), weights, biases, strict=True):
            state[layer + f"attention.{proj}.weight"] = weight
            if bias is not None:
                state[layer + f"attention.{proj}.bias"] = bias
        linear(layer + "attention.o_proj", block.attn.proj)
        norm(layer + "layernorm_after", block.norm2)
        linear(layer + "mlp.fc1", block.mlp.fc1)
        linear(layer + "mlp.fc2", block.mlp.fc2)
    norm(prefix + "layernorm", timm_model.norm)
    if not headless:
        if distilled:
            linear("cls_classifier", timm_model.head)
            linear("distillation_classifier", timm_model.head_dist)
        else:
            linear("classifier", timm_model.head)

    expected = set(model.state_dict())
    unknown = sorted(set(state) - expected)
    left = sorted(k for k in expected - set(state) if not k.startswith("pooler."))
    if unknown or left:  # a mapping bug, not a user error
        raise RuntimeError(f"timm ViT conversion: unmapped {left}, unknown {unknown}.")
    param = next(timm_model.parameters())
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name in state:
                tensor.copy_(state[name].reshape(tensor.shape))
    return model.to(device=param.device, dtype=param.dtype)


register_timm_converter(("VisionTransformer", "VisionTransformerDistilled"), convert_timm_vit)


__all__ = ["convert_timm_vit"]
