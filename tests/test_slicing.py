"""Exactness of graph-aware slicing: the pruned model equals the masked original (SNP_METHOD section 2)."""

import json

import pytest
import torch

from optimum_snp import PruningPlan, PruningRatios, apply_plan, build_plan, get_adapter
from optimum_snp.models import SNPDeiTForImageClassificationWithTeacher, SNPViTForImageClassification

from .conftest import logits_of, masked_reference, pixel_values, random_plan, tiny_model


KINDS = ["vit", "deit", "deit-teacher", "vit-base", "deit-base"]
GROUPS = {
    "qk": dict(heads=False, qk=True, v=False, mlp=False),
    "v": dict(heads=False, qk=False, v=True, mlp=False),
    "mlp": dict(heads=False, qk=False, v=False, mlp=True),
    "heads": dict(heads=True, qk=False, v=False, mlp=False),
    "all": dict(heads=True, qk=True, v=True, mlp=True),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("group", list(GROUPS))
@pytest.mark.parametrize("seed", [0, 1])
def test_pruned_equals_masked_original(kind, group, seed):
    model = tiny_model(kind, seed=seed)
    plan = random_plan(model, seed=seed, **GROUPS[group])
    pruned = apply_plan(model, plan)
    x = pixel_values()
    expected = logits_of(masked_reference(model, plan), x)
    actual = logits_of(pruned, x)
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() <= 1e-5
    # the pruning changed something: the masked model differs from the original
    if group != "heads" or any(len(lp.heads) < 4 for lp in plan.layers):
        assert not torch.allclose(logits_of(model, x), expected, atol=1e-4)
    # and the model really is smaller
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kind", ["vit", "deit", "deit-teacher"])
def test_hidden_pruning_equals_masked_layernorm_reference(kind):
    model = tiny_model(kind, seed=3)
    plan = random_plan(model, seed=3, hidden=True)
    assert len(plan.hidden) < model.config.hidden_size
    pruned = apply_plan(model, plan)
    assert pruned.config.hidden_size == len(plan.hidden)
    x = pixel_values()
    expected = logits_of(masked_reference(model, plan), x)
    assert (logits_of(pruned, x) - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("kind", ["vit-base", "deit-base"])
def test_hidden_pruning_base_model_kept_channels(kind):
    model = tiny_model(kind, seed=4)
    plan = random_plan(model, seed=4, hidden=True)
    pruned = apply_plan(model, plan)
    x = pixel_values()
    with torch.no_grad():
        ref = masked_reference(model, plan)(x)
        out = pruned(x)
    assert (out.last_hidden_state - ref.last_hidden_state[..., plan.hidden]).abs().max() <= 1e-5
    assert (out.pooler_output - ref.pooler_output).abs().max() <= 1e-5  # pooler width is an output, kept


@pytest.mark.parametrize("kind", ["vit", "deit-teacher"])
def test_eager_equals_sdpa_on_pruned_model(kind):
    model = tiny_model(kind, seed=5)
    plan = random_plan(model, seed=5, hidden=True)
    pruned = apply_plan(model, plan)
    dims = get_adapter(pruned).layer_dims()
    assert any(d.qk_head_dim != d.v_head_dim for d in dims), "the test needs split q/k vs v dims"
    x = pixel_values()
    pruned.set_attn_implementation("eager")
    eager = logits_of(pruned, x)
    pruned.set_attn_implementation("sdpa")
    assert pruned.config._attn_implementation == "sdpa"
    sdpa = logits_of(pruned, x)
    assert (eager - sdpa).abs().max().item() <= 1e-5


def test_original_logit_scale_is_kept():
    model = tiny_model("vit", seed=6)
    plan = random_plan(model, seed=6, heads=False, qk=True, v=False, mlp=False)
    pruned = apply_plan(model, plan)
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    assert pruned.config.original_head_dim == head_dim
    for layer in pruned.vit.layers:
        assert layer.attention.scaling == pytest.approx(head_dim**-0.5)
        assert layer.attention.head_dim < head_dim


def test_classes_and_config_fields():
    model = tiny_model("deit-teacher")
    plan = random_plan(model, seed=2, hidden=True)
    pruned = apply_plan(model, plan)
    assert isinstance(pruned, SNPDeiTForImageClassificationWithTeacher)
    cfg = pruned.config
    assert cfg.model_type == "snp_deit"
    assert cfg.num_heads_per_layer == [len(lp.heads) for lp in plan.layers]
    assert cfg.qk_head_dims == [len(lp.qk[0]) for lp in plan.layers]
    assert cfg.v_head_dims == [len(lp.v[0]) for lp in plan.layers]
    assert cfg.intermediate_sizes == [len(lp.mlp) for lp in plan.layers]
    assert cfg.num_labels == model.config.num_labels and cfg.id2label == model.config.id2label
    # the source model is left untouched
    assert model.config.hidden_size == 32 and model.deit.layers[0].attention.q_proj.out_features == 32


def test_repeated_pruning_equals_composed_masking():
    model = tiny_model("vit", seed=7)
    plan1 = random_plan(model, seed=7, hidden=False)
    once = apply_plan(model, plan1)
    assert isinstance(once, SNPViTForImageClassification)
    plan2 = random_plan(once, seed=8, hidden=False)
    twice = apply_plan(once, plan2)
    x = pixel_values()
    expected = logits_of(masked_reference(once, plan2), x)
    assert (logits_of(twice, x) - expected).abs().max().item() <= 1e-5
    assert twice.config.original_head_dim == model.config.hidden_size // model.config.num_attention_heads


def test_plan_json_round_trip_and_replay(tmp_path):
    model = tiny_model("deit", seed=9)
    plan = random_plan(model, seed=9, hidden=True)
    path = tmp_path / "plan.json"
    plan.save(path)
    data = json.loads(path.read_text())
    assert set(data) == {"hidden", "layers", "metadata"}
    loaded = PruningPlan.load(path)
    assert loaded == plan
    x = pixel_values()
    assert torch.equal(logits_of(apply_plan(model, loaded), x), logits_of(apply_plan(model, plan), x))


def test_unsorted_plan_is_normalized():
    model = tiny_model("vit", seed=10)
    plan = random_plan(model, seed=10)
    shuffled = PruningPlan.from_dict(plan.to_dict())
    for lp in shuffled.layers:
        lp.heads.reverse(), lp.qk.reverse(), lp.v.reverse(), lp.mlp.reverse()
    x = pixel_values()
    assert torch.equal(logits_of(apply_plan(model, shuffled), x), logits_of(apply_plan(model, plan), x))


def test_sdpa_pads_split_head_dims_exactly():
    """CPU SDPA zero-pads the narrower of q/k and v to reach the fused kernel: exact in both directions."""
    model = tiny_model("vit", seed=7)
    zeros = [0.0] * 3
    # layer 0: qk < v, layer 1: qk > v, layer 2: equal
    ratios = PruningRatios(qk=[0.5, 0.0, 0.25], v=[0.0, 0.75, 0.25], mlp=zeros, heads=zeros, hidden=0.0)
    pruned = apply_plan(model, build_plan(model, ratios))
    dims = get_adapter(pruned).layer_dims()
    assert dims[0].qk_head_dim < dims[0].v_head_dim and dims[1].qk_head_dim > dims[1].v_head_dim
    x = pixel_values()
    pruned.set_attn_implementation("eager")
    eager = logits_of(pruned, x)
    pruned.set_attn_implementation("sdpa")
    assert (logits_of(pruned, x) - eager).abs().max().item() <= 1e-5
    with torch.no_grad():
        masked = logits_of(masked_reference(model, build_plan(model, ratios)), x)
    assert (eager - masked).abs().max().item() <= 1e-5
