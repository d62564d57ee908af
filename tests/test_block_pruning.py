"""Block pruning: a layer may lose its whole attention block or its whole MLP block (the residual branch, its
LayerNorm included, disappears). Exact against the original with those branches silenced; sizes; round trips; the
config options and the allocation step; clear errors where a family cannot express it."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForImageClassification

import optimum_snp  # noqa: F401
from optimum_snp import LayerPlan, PruningPlan, SNPConfig, SNPPruner, apply_plan, get_adapter
from optimum_snp.accounting import model_size_of
from optimum_snp.allocation import allocate_dims
from optimum_snp.layer_dims import LayerDims
from optimum_snp.scoring.base import GroupScores, LayerScores

from .conftest import logits_of, pixel_values, random_plan, tiny_model
from .test_save_load import _REMOTE_SCRIPT


def _block_plan(model, seed: int = 0) -> PruningPlan:
    """A random plan, then layer 1 loses its attention block and layer 2 its MLP block."""
    plan = random_plan(model, seed=seed)
    plan.layers[1] = LayerPlan(heads=[], qk=[], v=[], mlp=plan.layers[1].mlp)
    plan.layers[2] = LayerPlan(heads=plan.layers[2].heads, qk=plan.layers[2].qk, v=plan.layers[2].v, mlp=[])
    return plan


def _silenced_reference(model, plan: PruningPlan):
    """The original with every removed unit zeroed and the removed blocks' branches silenced (output bias 0)."""
    from .conftest import masked_reference

    ref = masked_reference(model, copy.deepcopy(plan))
    adapter = get_adapter(ref)
    with torch.no_grad():
        for idx, block in plan.removed_blocks(get_adapter(model).layer_dims()):
            mods = adapter.layer_modules(idx)
            proj = mods["o_proj"] if block == "attention" else mods["fc2"]
            proj.weight.zero_()
            proj.bias.zero_()
    return ref


@pytest.mark.parametrize("kind", ["vit", "deit-teacher", "vit-base"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_removed_blocks_equal_the_silenced_original(kind, attn):
    model = tiny_model(kind, attn=attn, seed=3)
    plan = _block_plan(model, seed=3)
    assert plan.removed_blocks(get_adapter(model).layer_dims()) == [(1, "attention"), (2, "mlp")]
    pruned = apply_plan(model, plan)
    layers = get_adapter(pruned).layers()
    assert layers[1].attention is None and layers[1].layernorm_before is None
    assert layers[2].mlp is None and layers[2].layernorm_after is None
    x = pixel_values()
    expected = logits_of(_silenced_reference(model, plan), x)
    assert (logits_of(pruned, x) - expected).abs().max().item() <= 1e-5
    assert not torch.allclose(logits_of(model, x), expected, atol=1e-4)


def test_sizes_count_the_removed_blocks():
    model = tiny_model("vit", seed=4)
    pruned = apply_plan(model, _block_plan(model, seed=4))
    size = model_size_of(pruned)
    assert size.params == sum(p.numel() for p in pruned.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        pruned(pixel_values(batch=1))
    assert size.macs == counter.get_total_flops() // 2
    dims = get_adapter(pruned).layer_dims()
    assert dims[1] == LayerDims(0, 0, 0, dims[1].intermediate_size) and dims[2].intermediate_size == 0


def test_round_trips_with_removed_blocks(tmp_path):
    model = tiny_model("vit", seed=5)
    pruned = apply_plan(model, _block_plan(model, seed=5))
    pruned.save_pretrained(tmp_path / "model")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "model").eval()
    assert loaded.config.num_heads_per_layer[1] == 0 and loaded.config.intermediate_sizes[2] == 0
    pruned.set_attn_implementation(loaded.config._attn_implementation)
    x = pixel_values()
    assert torch.equal(logits_of(loaded, x), logits_of(pruned, x))
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
    assert torch.equal(torch.load(tmp_path / "out.pt"), logits_of(loaded, x))
    # a model with removed blocks can be pruned again
    again = apply_plan(loaded, random_plan(loaded, seed=6))
    assert get_adapter(again).layer_dims()[1].num_heads == 0


def test_config_rejects_half_removed_attention():
    from optimum_snp.models import SNPViTConfig

    with pytest.raises(ValueError, match="all three are 0"):
        SNPViTConfig(num_hidden_layers=2, num_heads_per_layer=[0, 4], qk_head_dims=[4, 4], v_head_dims=[0, 4])


@pytest.fixture(scope="module")
def digits():
    from optimum_snp.embedded import digits_dataset

    return digits_dataset()["train"].select(range(48))


def test_explicit_block_removal_with_a_target_and_refit(digits):
    from transformers import ViTImageProcessor

    model = tiny_model("vit", seed=7, num_labels=10)
    pruner = SNPPruner(model, image_processor=ViTImageProcessor(size={"height": 32, "width": 32}))
    config = SNPConfig(
        target_macs_ratio=0.5, remove_attention=[2], remove_mlp=[0], num_calibration_samples=32, allocation="scores"
    )
    pruned = pruner.prune(config, calibration_dataset=digits, show_progress=False)
    dims = get_adapter(pruned).layer_dims()
    assert not dims[2].has_attention and not dims[0].has_mlp and dims[1].has_attention
    assert model_size_of(pruned).macs <= 0.5 * model_size_of(model).macs
    layers = pruner.report["reconstruction"]["layers"]
    refit = [set(entry) - {"qk_criterion", "qk_mse"} for entry in layers]  # (the per-layer query/key choice)
    assert refit[0] == {"layer", "o_proj"} and refit[2] == {"layer", "fc2"}


def test_allocation_removes_a_block_whose_units_score_nothing():
    model = tiny_model("vit", seed=8)
    dims = get_adapter(model).layer_dims()
    gen = torch.Generator().manual_seed(0)
    layers = []
    for idx, d in enumerate(dims):
        scale = 1e-6 if idx == 1 else 1.0  # layer 1's attention contributes nothing
        layers.append(
            LayerScores(
                heads=torch.ones(d.num_heads),
                qk=scale * (1 + torch.rand(d.num_heads, d.qk_head_dim, generator=gen)),
                v=scale * (1 + torch.rand(d.num_heads, d.v_head_dim, generator=gen)),
                mlp=1 + torch.rand(d.intermediate_size, generator=gen),
            )
        )
    scores = GroupScores(hidden=torch.ones(32), layers=layers)
    target = 0.7 * model_size_of(model).macs
    common = dict(config=model.config, architecture="ViTForImageClassification", kept_hidden=32, base_dims=dims)
    with_blocks = allocate_dims(scores, target_macs=target, allow_block_removal=True, **common)
    without = allocate_dims(scores, target_macs=target, **common)
    assert not with_blocks[1].has_attention and all(d.has_attention for d in without)
    from optimum_snp.accounting import model_size

    for allocated in (with_blocks, without):
        assert (
            model_size(model.config, "ViTForImageClassification", hidden_size=32, layer_dims=allocated).macs <= target
        )


def test_block_pruning_option_is_validated_on_held_out_images(digits, monkeypatch):
    from transformers import ViTImageProcessor

    import optimum_snp.pruner as pruner_module

    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs.get("allow_block_removal", False))
        return allocate_dims(*args, **kwargs)

    monkeypatch.setattr(pruner_module, "allocate_dims", spy)
    model = tiny_model("vit", seed=9, num_labels=10)
    pruner = SNPPruner(model, image_processor=ViTImageProcessor(size={"height": 32, "width": 32}))
    pruner.prune(
        SNPConfig(target_macs_ratio=0.4, block_pruning=True, num_calibration_samples=32, num_validation_samples=16),
        calibration_dataset=digits,
        show_progress=False,
    )
    names = [c["allocation"] for c in pruner.report["allocation"]["candidates"]]
    assert True in calls and False in calls and "uniform" in names  # allocations with and without whole blocks
    # (an allocation with blocks that removed none equals one without and is tried once, under the first name)
    assert len(names) >= 2


def test_families_without_block_removal_say_so():
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48))
    with pytest.raises(ValueError, match="Block pruning"):
        SNPPruner(bert, tokenizer=object()).prune(
            SNPConfig(mlp_ratio=0.5, remove_mlp=[0], criterion="magnitude", reconstruct="none")
        )
    plan = random_plan(bert, seed=0)
    plan.layers[0] = LayerPlan(heads=plan.layers[0].heads, qk=plan.layers[0].qk, v=plan.layers[0].v, mlp=[])
    with pytest.raises(ValueError, match="cannot express"):
        apply_plan(bert, plan)
    with pytest.raises(ValueError, match="model has 3 layers"):
        SNPPruner(tiny_model("vit")).prune(
            SNPConfig(remove_attention=[3], criterion="magnitude", reconstruct="none"), show_progress=False
        )


@pytest.mark.parametrize("allocation", ["scores", "validated"])
def test_a_target_below_the_within_group_floor_is_reached_by_removing_blocks(digits, allocation):
    from transformers import ViTImageProcessor

    model = tiny_model("vit", seed=9, num_labels=10)
    pruner = SNPPruner(model, image_processor=ViTImageProcessor(size={"height": 32, "width": 32}))
    # (this model: 28% of its MACs at the within-group floor, 19% with every block removed)
    common = dict(target_macs_ratio=0.23, num_calibration_samples=16, num_validation_samples=8, allocation=allocation)
    # removing at most 90% of every group cannot get there ...
    with pytest.raises(ValueError, match="below .* the least this model reaches"):
        pruner.prune(SNPConfig(**common), calibration_dataset=digits, show_progress=False)
    # ... removing whole blocks can: only the candidates that remove blocks are tried
    pruned = pruner.prune(SNPConfig(**common, block_pruning=True), calibration_dataset=digits, show_progress=False)
    assert model_size_of(pruned).macs <= 0.23 * model_size_of(model).macs
    dims = get_adapter(pruned).layer_dims()
    assert any(not d.has_attention or not d.has_mlp for d in dims)
    tried = [c["allocation"] for c in pruner.report["allocation"]["candidates"]]
    assert tried and all(name.endswith("+blocks") for name in tried), tried
