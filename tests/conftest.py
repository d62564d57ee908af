"""Tiny ViT/DeiT models built from configs (random weights) and helpers shared by the tests."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn
from transformers import (
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    DeiTModel,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

from optimum_snp import LayerPlan, PruningPlan, get_adapter


TINY = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=48,
    image_size=32,
    patch_size=8,
    num_labels=5,
    layer_norm_eps=1e-6,
    initializer_range=0.3,
)

MODEL_CLASSES = {
    "vit": ViTForImageClassification,
    "vit-base": ViTModel,
    "deit": DeiTForImageClassification,
    "deit-teacher": DeiTForImageClassificationWithTeacher,
    "deit-base": DeiTModel,
}


def tiny_model(kind: str = "vit", attn: str = "eager", seed: int = 0, noisy: bool = True, **overrides) -> nn.Module:
    """A tiny stock model with random weights; `noisy` randomizes LayerNorm/bias/token params (stock init sets
    many of them to 0 or 1, which could hide slicing mistakes)."""
    torch.manual_seed(seed)
    config_cls = DeiTConfig if kind.startswith("deit") else ViTConfig
    config = config_cls(**{**TINY, **overrides})
    config._attn_implementation = attn
    model = MODEL_CLASSES[kind](config)
    with torch.no_grad():
        for name, param in model.named_parameters() if noisy else ():
            if "layernorm" in name or name.endswith("bias") or "token" in name or "position" in name:
                param.normal_(0, 0.2).add_(1.0 if name.endswith("weight") else 0.0)
    return model.eval()


def pixel_values(batch: int = 3, seed: int = 1, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def random_plan(model: nn.Module, seed: int = 0, heads=True, qk=True, v=True, mlp=True, hidden=False) -> PruningPlan:
    """A random valid plan; the flags say which groups lose units."""
    rng = random.Random(seed)
    adapter = get_adapter(model)

    def subset(n, on):
        return sorted(rng.sample(range(n), rng.randint(1, n - 1) if on and n > 1 else n))

    layers = []
    for d in adapter.layer_dims():
        kept_heads = subset(d.num_heads, heads)
        nqk = len(subset(d.qk_head_dim, qk))
        nv = len(subset(d.v_head_dim, v))
        layers.append(
            LayerPlan(
                heads=kept_heads,
                qk=[sorted(rng.sample(range(d.qk_head_dim), nqk)) for _ in kept_heads],
                v=[sorted(rng.sample(range(d.v_head_dim), nv)) for _ in kept_heads],
                mlp=subset(d.intermediate_size, mlp),
            )
        )
    return PruningPlan(hidden=subset(adapter.hidden_size, hidden), layers=layers)


class MaskedLayerNorm(nn.Module):
    """LayerNorm whose statistics use the kept channels only; pruned channels output 0 (SNP_METHOD 2)."""

    def __init__(self, norm: nn.LayerNorm, kept: list[int]):
        super().__init__()
        self.norm = norm
        self.register_buffer("mask", torch.zeros(norm.normalized_shape[0]))
        self.mask[kept] = 1.0

    def forward(self, x):
        n = self.mask.sum()
        mean = (x * self.mask).sum(-1, keepdim=True) / n
        var = (((x - mean) * self.mask) ** 2).sum(-1, keepdim=True) / n
        y = (x - mean) / torch.sqrt(var + self.norm.eps)
        return (y * self.norm.weight + self.norm.bias) * self.mask


def masked_reference(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """The unpruned model with every removed filter zeroed (and, for hidden channels, masked LayerNorms)."""
    ref = copy.deepcopy(model)
    adapter = get_adapter(ref)
    params = dict(ref.named_parameters())

    def zero_except(name, axis, kept):
        tensor = params[name]
        mask = torch.ones(tensor.shape[axis], dtype=torch.bool)
        mask[kept] = False
        with torch.no_grad():
            tensor.index_fill_(axis, mask.nonzero().flatten(), 0.0)

    dims = adapter.layer_dims()
    with torch.no_grad():
        for idx, (lp, d) in enumerate(zip(plan.layers, dims, strict=True)):
            rows = {"qk": lp.qk_rows(d), "v": lp.v_rows(d), "mlp": lp.mlp}
            for group, members in adapter.layer_groups(idx).items():
                if group == "heads":  # per-head tensors (a bias table): a removed head is silenced by its v rows
                    continue
                for name, axis in members:
                    # zero the filter's output rows (weights, not norm statistics); that already silences it
                    if axis == 0 and name in params:
                        zero_except(name, axis, rows[group])
        if len(plan.hidden) < adapter.hidden_size:
            for name, axis in adapter.hidden_group():
                zero_except(name, axis, plan.hidden)
            for mod_name, module in list(ref.named_modules()):
                if isinstance(module, nn.LayerNorm):
                    parent_name, _, child = mod_name.rpartition(".")
                    parent = ref.get_submodule(parent_name) if parent_name else ref
                    setattr(parent, child, MaskedLayerNorm(module, plan.hidden))
    return ref


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


@pytest.fixture
def tmp_dir(tmp_path):
    return tmp_path
