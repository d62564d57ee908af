"""Bad input gets a clear error that names it."""

import pytest
from transformers import GPT2Config, GPT2Model, ViTForMaskedImageModeling

from optimum_snp import PruningPlan, PruningRatios, SNPViTConfig, apply_plan, build_plan, get_adapter

from .conftest import TINY, random_plan, tiny_model


def test_unsupported_architecture_lists_supported():
    gpt2 = GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=100))  # a decoder: not supported
    with pytest.raises(
        ValueError, match="cannot prune GPT2Model.*Supported model classes: .*DeiTForImageClassification"
    ):
        get_adapter(gpt2)
    mim = ViTForMaskedImageModeling(tiny_model("vit").config)
    with pytest.raises(ValueError, match="cannot prune ViTForMaskedImageModeling.*ViTForImageClassification"):
        apply_plan(mim, PruningPlan.identity(32, []))


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda p: p.layers[1].qk.__setitem__(0, []),
            "remove every one of the 8 query/key filters of head 0 of layer 1",
        ),
        (lambda p: p.layers[0].v.__setitem__(2, []), "remove every one of the 8 value filters of head 2 of layer 0"),
        # an empty 'mlp' list, or empty 'heads', 'qk' and 'v' lists, remove a whole block (tests/test_block_pruning.py)
        (lambda p: setattr(p.layers[0], "heads", []), "keeps no head in layer 0 .* give empty 'qk' and 'v' lists"),
        (lambda p: setattr(p, "hidden", []), "remove every one of the 32 hidden channels"),
        (
            lambda p: p.layers[0].qk.__setitem__(1, [0]),
            "different numbers of query/key filters in the heads of layer 0",
        ),
        (lambda p: p.layers[0].qk.__setitem__(1, [0, 1, 2, 3, 4, 5, 6, 9]), r"keeps query/key filters \[9\]"),
        (lambda p: p.layers.pop(), "The plan has 2 layers but the model has 3"),
    ],
)
def test_invalid_plans(edit, message):
    model = tiny_model("vit")
    plan = PruningPlan.identity(32, get_adapter(model).layer_dims())
    edit(plan)
    with pytest.raises(ValueError, match=message):
        apply_plan(model, plan)


def test_ratio_that_removes_everything():
    model = tiny_model("vit")
    ratios = PruningRatios.uniform(3, qk=0.95)
    with pytest.raises(ValueError, match="would remove all 8 query/key filters per head of layer 0"):
        build_plan(model, ratios)
    with pytest.raises(ValueError, match=r"mlp ratio of layer 1 must be a fraction to remove in \[0, 1\)"):
        build_plan(model, PruningRatios([0.0] * 3, [0.0] * 3, [0.1, 1.5, 0.0], [0.0] * 3))


def test_invalid_snp_config():
    with pytest.raises(ValueError, match="`v_head_dims` has 2 entries but the model has num_hidden_layers=3"):
        SNPViTConfig(**TINY, v_head_dims=[4, 4])
    with pytest.raises(ValueError, match="`intermediate_sizes` must be >= 0 in every layer, got -1 in layer 1"):
        SNPViTConfig(**TINY, intermediate_sizes=[4, -1, 4])
    assert SNPViTConfig(**TINY, intermediate_sizes=[4, 0, 4]).intermediate_sizes[1] == 0  # MLP block removed
    with pytest.raises(ValueError, match=r"Layer 1 has \(heads, qk_head_dim, v_head_dim\) = \(4, 0, 8\)"):
        SNPViTConfig(**TINY, qk_head_dims=[8, 0, 8])


def test_malformed_plan_dict():
    with pytest.raises(ValueError, match="must be a dict with 'hidden'"):
        PruningPlan.from_dict({"layers": []})
    model = tiny_model("deit")
    plan = random_plan(model)
    assert PruningPlan.from_dict(plan.to_dict()) == plan
