"""EfficientFormer: exact conversion from timm, size counts, pruned == masked original for every group, round trips,
MACs targets, and the whole pipeline on a small model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModel, AutoModelForImageClassification

import optimum_snp  # noqa: F401  (registers the Auto classes)
from optimum_snp import SNPConfig, SNPPruner, apply_plan, get_adapter
from optimum_snp.accounting import model_size_of
from optimum_snp.adapters.efficientformer import convert_timm_efficientformer
from optimum_snp.models import (
    SNPEfficientFormerConfig,
    SNPEfficientFormerForImageClassification,
    SNPEfficientFormerModel,
)

from .conftest import logits_of, masked_reference, random_plan
from .test_save_load import _REMOTE_SCRIPT


TINY = dict(
    image_size=64,
    depths=[1, 1, 2, 2],
    hidden_sizes=[8, 16, 24, 32],
    num_vit=2,
    key_dim=8,
    num_attention_heads=2,
    attn_ratio=2,
    num_labels=5,
)


@torch.no_grad()
def _noisy(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random Linear weights, norm statistics, layer scales and attention biases: the stock init (zeros, ones, 1e-5
    layer scales, 0.02-std weights) would make most blocks identities and hide mistakes."""
    gen = torch.Generator().manual_seed(seed)

    def normal(t, mean=0.0, std=0.2):
        t.copy_(mean + std * torch.randn(t.shape, generator=gen))

    for module in model.modules():
        if isinstance(module, nn.Linear):  # the 0.02-std init leaves the attention almost uniform
            normal(module.weight, 0.0, module.in_features**-0.5)
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            normal(module.running_mean, 0.0, 0.1)
            module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=gen))
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
            normal(module.weight, 1.0)
            normal(module.bias)
        if hasattr(module, "gamma"):
            normal(module.gamma, 0.0, 0.5)
        if hasattr(module, "attention_biases"):
            normal(module.attention_biases, 0.0, 1.0)
    return model.eval()


def tiny(cls=SNPEfficientFormerForImageClassification, seed: int = 0, attn: str = "eager", **overrides):
    torch.manual_seed(seed)
    config = SNPEfficientFormerConfig(**{**TINY, **overrides})
    config._attn_implementation = attn
    return _noisy(cls(config), seed)


def images(batch: int = 3, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---- conversion from timm ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def timm_l1():
    torch.manual_seed(0)
    return _noisy(timm.create_model("efficientformer_l1", pretrained=False), seed=0)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_timm_l1_conversion_is_exact(timm_l1, attn):
    converted = convert_timm_efficientformer(timm_l1)
    assert isinstance(converted, SNPEfficientFormerForImageClassification) and not converted.training
    converted.set_attn_implementation(attn)
    x = images(2, 224)
    with torch.no_grad():
        expected = timm_l1(x)
        actual = converted(pixel_values=x).logits
    assert expected.abs().max() > 0.1  # not a degenerate comparison
    assert (actual - expected).abs().max().item() <= 1e-5
    cfg = converted.config
    assert (cfg.depths, cfg.hidden_sizes, cfg.num_vit, cfg.num_labels) == ([3, 2, 6, 4], [48, 96, 224, 448], 1, 1000)


def test_timm_custom_and_headless_conversion():
    torch.manual_seed(1)
    model = _noisy(
        timm.models.efficientformer.EfficientFormer(
            depths=(1, 1, 2, 3), embed_dims=(8, 16, 24, 32), num_vit=2, num_classes=7
        ),
        seed=1,
    )
    converted = convert_timm_efficientformer(model)
    assert converted.config.num_vit == 2 and converted.config.depths == [1, 1, 2, 3]
    x = images(2, 224)
    with torch.no_grad():
        assert (converted(pixel_values=x).logits - model(x)).abs().max() <= 1e-5
    model.reset_classifier(0)
    headless = convert_timm_efficientformer(model)
    assert isinstance(headless, SNPEfficientFormerModel)
    with torch.no_grad():
        features = model.forward_features(x)
        assert (headless(pixel_values=x).last_hidden_state - features).abs().max() <= 1e-5


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [(dict(global_pool=""), "global_pool"), (dict(act_layer=nn.ReLU), "act_layer")],
)
def test_timm_options_without_counterpart_are_named(kwargs, option):
    model = timm.models.efficientformer.EfficientFormer(
        depths=(1, 1, 1, 1), embed_dims=(8, 16, 24, 32), num_vit=1, num_classes=3, **kwargs
    )
    with pytest.raises(ValueError, match=option):
        convert_timm_efficientformer(model)


def test_wrong_input_size_for_the_bias_table_is_an_error(timm_l1):
    with pytest.raises(ValueError, match="attention-bias table"):
        convert_timm_efficientformer(timm_l1, image_size=160)


# ---- size ---------------------------------------------------------------------------------------------------------
def _flop_counter_macs(model: nn.Module, size: int) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(pixel_values=torch.zeros(1, 3, size, size))
    return counter.get_total_flops() // 2


def test_l1_counts_match_flop_counter_and_the_paper():
    model = SNPEfficientFormerForImageClassification(SNPEfficientFormerConfig(num_labels=1000)).eval()
    size = model_size_of(model)
    assert size.params == sum(p.numel() for p in model.parameters())
    assert size.macs == _flop_counter_macs(model, 224)
    assert round(size.mparams, 1) == 12.3 and round(size.gmacs, 1) == 1.3  # EfficientFormer-L1 at 224


def test_pruned_counts_match_flop_counter():
    model = tiny()
    pruned = apply_plan(model, random_plan(model, seed=3))
    for m in (model, pruned):
        size = model_size_of(m)
        assert size.params == sum(p.numel() for p in m.parameters())
        assert size.macs == _flop_counter_macs(m, 64)
    assert model_size_of(pruned).macs < model_size_of(model).macs


# ---- slicing ------------------------------------------------------------------------------------------------------
GROUPS = {
    "mlp": dict(heads=False, qk=False, v=False, mlp=True),
    "qk": dict(heads=False, qk=True, v=False, mlp=False),
    "v": dict(heads=False, qk=False, v=True, mlp=False),
    "heads": dict(heads=True, qk=False, v=False, mlp=False),
    "all": dict(heads=True, qk=True, v=True, mlp=True),
}


@pytest.mark.parametrize("group", list(GROUPS))
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_pruned_equals_masked_original(group, attn):
    model = tiny(attn=attn, seed=2)
    plan = random_plan(model, seed=2, **GROUPS[group])
    pruned = apply_plan(model, plan)
    x = images()
    expected = logits_of(masked_reference(model, plan), x)
    assert (logits_of(pruned, x) - expected).abs().max().item() <= 1e-5
    assert not torch.allclose(logits_of(model, x), expected, atol=1e-4)  # the cut changed the function
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    assert get_adapter(pruned).layer_dims() == plan.layer_dims()


def test_pooling_blocks_have_no_attention_groups():
    model = tiny()
    adapter = get_adapter(model)
    dims = adapter.layer_dims()
    assert [d.has_attention for d in dims] == [False, False, False, False, True, True]
    assert set(adapter.layer_groups(0)) == {"mlp"}
    assert set(adapter.layer_groups(5)) == {"qk", "v", "mlp", "heads"}
    assert any(name.endswith("mlp.norm1.running_var") for name, _ in adapter.layer_groups(0)["mlp"])


# ---- save / load --------------------------------------------------------------------------------------------------
def test_round_trip_bit_for_bit(tmp_path):
    model = tiny()
    pruned = apply_plan(model, random_plan(model, seed=4))
    pruned.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "snp_efficientformer"
    assert config["intermediate_sizes"] == pruned.config.intermediate_sizes
    assert config["auto_map"]["AutoModelForImageClassification"].startswith("modeling_snp_efficientformer.")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(pruned)
    pruned.set_attn_implementation(loaded.config._attn_implementation)
    x = images()
    assert torch.equal(logits_of(loaded, x), logits_of(pruned, x))
    for (name, a), (_, b) in zip(pruned.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    # and back: the loaded model saves the same files
    loaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == config


def test_base_model_round_trip(tmp_path):
    model = tiny(SNPEfficientFormerModel)
    pruned = apply_plan(model, random_plan(model, seed=5))
    pruned.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    pruned.set_attn_implementation("eager")
    x = images()
    assert torch.equal(loaded(pixel_values=x).last_hidden_state, pruned(pixel_values=x).last_hidden_state)


def test_trust_remote_code_without_optimum_snp(tmp_path):
    model = tiny()
    pruned = apply_plan(model, random_plan(model, seed=6))
    pruned.save_pretrained(tmp_path / "model")
    x = images()
    torch.save(x, tmp_path / "x.pt")
    (tmp_path / "load.py").write_text(_REMOTE_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "load.py", str(tmp_path / "model"), "x.pt", "out.pt"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("SNPEfficientFormerForImageClassification")
    pruned.set_attn_implementation("sdpa")
    assert torch.equal(torch.load(tmp_path / "out.pt"), logits_of(pruned, x))


# ---- allocation ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [0.6e9, 0.5e9])
@pytest.mark.parametrize("allocation", ["uniform", "scores"])
def test_l1_macs_targets_of_the_paper(timm_l1, target, allocation):
    model = convert_timm_efficientformer(timm_l1)
    pruned = SNPPruner(model).prune(
        SNPConfig(target_macs=target, criterion="magnitude", reconstruct="none", allocation=allocation),
        show_progress=False,
    )
    macs = model_size_of(pruned).macs
    assert 0.98 * target <= macs <= target
    dims, original = get_adapter(pruned).layer_dims(), get_adapter(model).layer_dims()
    assert dims[-1].num_heads == 8  # heads are kept unless head_ratio says otherwise
    assert all(d.intermediate_size < o.intermediate_size for d, o in zip(dims, original, strict=True))


# ---- the whole pipeline -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_64():
    from optimum_snp.embedded import digits_dataset

    return digits_dataset()["train"].select(range(48))


def test_default_pruning_end_to_end(digits_64, tmp_path):
    from transformers import ViTImageProcessor

    model = tiny(num_labels=10)
    processor = ViTImageProcessor(size={"height": 64, "width": 64})
    pruner = SNPPruner(model, image_processor=processor)
    pruned = pruner.prune(
        SNPConfig(target_macs_ratio=0.6, num_calibration_samples=32, num_validation_samples=16),
        calibration_dataset=digits_64,
        save_dir=tmp_path / "out",
        show_progress=False,
    )
    report = pruner.report
    assert report["reconstruction"]["mode"] == "least_squares"
    layers = report["reconstruction"]["layers"]
    refit = [set(entry) - {"qk_criterion", "qk_mse"} for entry in layers]  # (the per-layer query/key choice)
    assert refit[0] == {"layer", "fc2"} and refit[-1] == {"layer", "o_proj", "fc2"}
    assert all(entry["fc2"]["mse_after"] <= entry["fc2"]["mse_before"] + 1e-9 for entry in layers)
    assert model_size_of(pruned).macs <= 0.6 * model_size_of(model).macs
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "out").eval()
    pruned.set_attn_implementation(loaded.config._attn_implementation)
    x = images()
    assert torch.equal(logits_of(loaded, x), logits_of(pruned, x))
    assert (tmp_path / "out" / "README.md").read_text().count("EfficientFormer") >= 1


def test_onnx_export(tmp_path):
    pytest.importorskip("onnxruntime")
    from optimum_snp.exporters.onnx import export_onnx

    model = tiny()
    pruned = apply_plan(model, random_plan(model, seed=7))
    result = export_onnx(pruned, tmp_path / "onnx")
    assert (tmp_path / "onnx" / "model.onnx").is_file()
    assert result.max_abs_diff <= 1e-4
