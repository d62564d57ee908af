"""Reference facts from the SNP paper (ECCV 2024) and the DeiT model sizes it prunes."""

from __future__ import annotations


# DeiT sizes (transformers' DeiTConfig fields); the rest is DeiTConfig's defaults (12 layers, patch 16, 224x224)
DEIT_SIZES = {
    "tiny": dict(hidden_size=192, num_attention_heads=3, intermediate_size=768),
    "small": dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536),
    "base": dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}

# ratio table -> (DeiT size, paper's params after in M or None, paper's GFLOPs after), SNP_METHOD sections 4-5
PAPER_TABLES = {
    "DeiT_t": ("tiny", None, 0.6),
    "DeiT_s": ("small", 10.0, 2.0),
    "DeiT_s_small": ("small", None, 1.3),
    "DeiT_b": ("base", 31.6, 6.4),
}


def deit_config(size: str, num_labels: int = 1000, **overrides):
    """transformers `DeiTConfig` of DeiT-Tiny/Small/Base ('tiny', 'small', 'base') with an ImageNet head."""
    from transformers import DeiTConfig

    if size not in DEIT_SIZES:
        raise ValueError(f"Unknown DeiT size {size!r}; choose one of {list(DEIT_SIZES)}.")
    return DeiTConfig(num_labels=num_labels, **{**DEIT_SIZES[size], **overrides})
