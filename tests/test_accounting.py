"""Params and MACs from the config agree with a parameter count and with torch.utils.flop_counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from optimum_snp import apply_plan, model_size_of

from .conftest import pixel_values, random_plan, tiny_model


def measured_macs(model, batch=2):
    x = pixel_values(batch)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() / 2 / batch


@pytest.mark.parametrize("kind", ["vit", "deit", "deit-teacher", "vit-base", "deit-base"])
@pytest.mark.parametrize("pruned", [False, True])
def test_params_and_macs_from_config(kind, pruned):
    model = tiny_model(kind, attn="eager", seed=11)
    if pruned:
        model = apply_plan(model, random_plan(model, seed=11, hidden=True))
        model.set_attn_implementation("eager")
    size = model_size_of(model)
    assert size.params == sum(p.numel() for p in model.parameters())
    assert size.macs == measured_macs(model)


def test_qkv_bias_false_and_no_labels():
    model = tiny_model("deit-teacher", qkv_bias=False, num_labels=0)
    pruned = apply_plan(model, random_plan(model, seed=12, hidden=True))
    pruned.set_attn_implementation("eager")
    for m in (model, pruned):
        size = model_size_of(m)
        assert size.params == sum(p.numel() for p in m.parameters())
        assert size.macs == measured_macs(m)
