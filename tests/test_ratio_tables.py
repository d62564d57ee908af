"""The authors' ratio tables ship with the package and reproduce the paper's model sizes."""

import json

import pytest
import torch
from transformers import DeiTForImageClassification

from optimum_snp import (
    PruningRatios,
    apply_plan,
    available_ratio_tables,
    build_plan,
    load_ratio_table,
    model_size_of,
)
from optimum_snp.paper import deit_config

from .conftest import tiny_model


# SNP_METHOD section 4 / the paper: (model, params after or None, GMACs after)
PAPER = {
    "DeiT_t": ("tiny", None, 0.64),
    "DeiT_s": ("small", 10.06e6, 2.04),
    "DeiT_s_small": ("small", 6.47e6, 1.27),
    "DeiT_b": ("base", 31.59e6, 6.32),
}


def test_tables_ship_with_the_package():
    assert available_ratio_tables() == ["DeiT_b", "DeiT_s", "DeiT_s_small", "DeiT_t"]


@pytest.mark.parametrize("table", list(PAPER))
def test_paper_size_table(table):
    name, params, gmacs = PAPER[table]
    torch.manual_seed(0)
    model = DeiTForImageClassification(deit_config(name, image_size=224)).eval()
    pruned = apply_plan(model, build_plan(model, table))
    size = model_size_of(pruned)
    assert size.params == sum(p.numel() for p in pruned.parameters())
    assert size.gmacs == pytest.approx(gmacs, rel=0.01)
    if params is not None:
        assert size.params == pytest.approx(params, rel=0.01)


def test_table_by_path_and_dict(tmp_path):
    by_name = load_ratio_table("DeiT_s", num_layers=12)
    path = tmp_path / "t.json"
    data = json.loads(json.dumps(by_name_dict := _as_table(by_name)))
    path.write_text(json.dumps(data))
    assert load_ratio_table(path) == by_name
    assert load_ratio_table(by_name_dict) == by_name
    assert by_name.qk[0] == pytest.approx(0.609375) and by_name.v[0] == pytest.approx(0.203125)
    assert by_name.hidden == pytest.approx(0.20052083333333334)


def _as_table(r: PruningRatios) -> dict:
    table = {"add_24": r.hidden}
    for i in range(r.num_layers):
        table["matmul" if i == 0 else f"matmul_{2 * i}"] = r.qk[i]
        table[f"matmul_{2 * i + 1}"] = r.v[i]
        table[f"blocks_{i}_mlp_fc1"] = r.mlp[i]
    return table


def test_unknown_keys_are_named():
    table = _as_table(load_ratio_table("DeiT_t"))
    table["blocks_0_attn_proj"] = 0.1
    with pytest.raises(ValueError, match="unknown keys.*blocks_0_attn_proj"):
        load_ratio_table(table)


def test_wrong_number_of_layers():
    model = tiny_model("deit")  # 3 layers
    with pytest.raises(ValueError, match="is for 12 layers but the model has 3"):
        build_plan(model, "DeiT_s")


def test_unknown_name_and_bad_values():
    with pytest.raises(ValueError, match="Unknown ratio table 'DeiT_xl'.*DeiT_b"):
        load_ratio_table("DeiT_xl")
    table = _as_table(load_ratio_table("DeiT_t"))
    table["matmul_3"] = 1.0
    with pytest.raises(ValueError, match=r"'matmul_3'.*\[0, 1\)"):
        load_ratio_table(table)
    del table["matmul_3"]
    with pytest.raises(ValueError, match=r"no value \('matmul_<2l\+1>'\) ratio for layers \[1\]"):
        load_ratio_table(table)
