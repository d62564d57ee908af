"""ONNX export of pruned and stock tiny ViT/DeiT models, validated with onnxruntime (export_onnx and the CLI)."""

import copy
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from transformers import AutoModelForImageClassification, ResNetConfig, ResNetForImageClassification, ViTImageProcessor

from optimum_snp import apply_plan
from optimum_snp.cli import main as cli_main
from optimum_snp.exporters import OnnxValidationError, export_onnx, onnx_session, run_onnx, validate_onnx
from optimum_snp.exporters import onnx as onnx_exporter

from .conftest import logits_of, pixel_values, random_plan, tiny_model


ATOL = 1e-4


def pruned_model(kind: str, seed: int) -> nn.Module:
    model = tiny_model(kind)
    pruned = apply_plan(model, random_plan(model, seed=seed, hidden=True)).eval()
    config = pruned.config
    # the shapes the exporter must get right: fewer heads, q/k dim != v dim, pruned hidden and MLP widths
    assert config.hidden_size < 32 and min(config.num_heads_per_layer) < 4 and min(config.intermediate_sizes) < 48
    assert any(qk != v for qk, v in zip(config.qk_head_dims, config.v_head_dims, strict=True))
    return pruned


def onnx_ops(path) -> set[str]:
    return {node.op_type for node in onnx.load(path).graph.node}


@pytest.fixture(scope="module")
def vit_export(tmp_path_factory):
    """A pruned SNP ViT and its export (shared: an export takes a few seconds)."""
    model = pruned_model("vit", seed=1)
    result = export_onnx(model, tmp_path_factory.mktemp("onnx") / "vit")
    return model, result


def test_pruned_vit_matches_pytorch_at_a_new_batch_size(vit_export):
    model, result = vit_export
    assert result.opset == 20 and result.attn_implementation == "eager"
    assert result.input_names == ["pixel_values"] and result.output_names == ["logits"]
    assert result.validated_batch_sizes == (1, 3) and result.max_abs_diff <= ATOL
    assert result.files == ["config.json", "model.onnx"]
    assert os.path.isfile(result.path)

    session = onnx_session(result.output_dir)
    assert session.get_inputs()[0].shape == ["batch_size", 3, 32, 32]  # dynamic batch, static image size
    x = pixel_values(batch=5, seed=7)  # neither the export batch (2) nor a validation batch
    got = run_onnx(session, x)["logits"]
    assert got.shape == (5, 5)
    np.testing.assert_allclose(got, logits_of(model, x).numpy(), atol=ATOL, rtol=0)
    assert {"MatMul", "Softmax"} <= onnx_ops(result.path) and "Attention" not in onnx_ops(result.path)


def test_validate_onnx_catches_a_model_that_differs(vit_export):
    model, result = vit_export
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.classifier.bias.add_(1.0)
    assert validate_onnx(result.path, model)["logits"] <= ATOL
    with pytest.raises(OnnxValidationError, match=r"differ by up to .* in 'logits'.*above atol=0.0001"):
        validate_onnx(result.path, other)


def test_failed_validation_writes_nothing(vit_export, tmp_path, monkeypatch):
    model, result = vit_export
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.classifier.bias.add_(1.0)
    # skip the real export: "export" the first model's graph for the other model, which validation must reject
    monkeypatch.setattr(onnx_exporter, "_torch_export", lambda *args: shutil.copy(result.path, args[1]))
    with pytest.raises(OnnxValidationError, match="nothing was written"):
        export_onnx(other, tmp_path / "out")
    assert os.listdir(tmp_path) == []  # neither the output nor the temporary folder


def test_pruned_deit_with_teacher_as_onnx_attention(tmp_path):
    model = pruned_model("deit-teacher", seed=3).train()
    result = export_onnx(model, tmp_path / "out", attn_implementation="sdpa", opset=23)
    assert result.output_names == ["logits", "cls_logits", "distillation_logits"]
    assert result.max_abs_diff <= ATOL and set(result.max_abs_diff_per_output) == set(result.output_names)
    assert "Attention" in onnx_ops(result.path)  # opset 23's operator, with v dim != q/k dim
    assert model.training and model.config._attn_implementation == "eager"  # the model is left as it was

    x = pixel_values(batch=4, seed=3)
    got = run_onnx(onnx_session(result.path), x)
    with torch.no_grad():
        expected = model.eval()(x)
    for name in result.output_names:
        np.testing.assert_allclose(got[name], expected[name].numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(got["logits"], (got["cls_logits"] + got["distillation_logits"]) / 2, atol=1e-6)


def test_stock_model(tmp_path):
    model = tiny_model("vit", attn="sdpa")
    result = export_onnx(model, tmp_path / "out")  # exported with eager attention, then restored
    assert result.max_abs_diff <= ATOL and model.config._attn_implementation == "sdpa"
    assert type(model).__name__ == "ViTForImageClassification"


def test_cli_exports_a_saved_pruned_folder(tmp_path):
    source, out = tmp_path / "pruned", tmp_path / "onnx"
    model = pruned_model("deit", seed=2)
    model.save_pretrained(source)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(source)
    out.mkdir()
    (out / "old.txt").write_text("replaced by --overwrite")
    cli = shutil.which("optimum-cli", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    assert cli, "optimum-cli is not installed (pip install -e .)"
    args = [cli, "snp", "export", "onnx", "--model", str(source), "--output", str(out), "--overwrite"]
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max abs diff" in result.stdout and "pixel_values (dynamic batch axis)" in result.stdout
    assert sorted(os.listdir(out)) == ["config.json", "model.onnx", "preprocessor_config.json"]

    reloaded = AutoModelForImageClassification.from_pretrained(source)
    x = pixel_values(batch=2, seed=5)
    got = run_onnx(onnx_session(out), x)["logits"]
    np.testing.assert_allclose(got, logits_of(reloaded, x).numpy(), atol=ATOL, rtol=0)


# ---- bad input: a clear error, nothing written ---------------------------------------------------------------
@pytest.fixture
def saved_vit(tmp_path):
    tiny_model("vit").save_pretrained(tmp_path / "vit")
    return tmp_path / "vit"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(opset=17), "opset must be an integer >= 18"),
        (dict(atol=-1.0), "atol must be a number >= 0"),
        (dict(attn_implementation="flash_attention_2"), r"attn_implementation must be one of \['eager', 'sdpa'\]"),
        (dict(batch_sizes=(0,)), "batch_sizes must be positive integers"),
    ],
)
def test_bad_options(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        export_onnx(tiny_model("vit"), tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_bad_models(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="ONNX export supports the models optimum-snp prunes .*, not Linear"):
        export_onnx(nn.Linear(2, 2), out)
    resnet = tmp_path / "resnet"
    ResNetForImageClassification(
        ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1], num_labels=3)
    ).save_pretrained(resnet)
    with pytest.raises(ValueError, match=r"not ResNetForImageClassification \(model_type='resnet'\)"):
        export_onnx(resnet, out)
    with pytest.raises(ValueError, match="Could not load .*missing"):
        export_onnx(tmp_path / "missing", out)
    with pytest.raises(ValueError, match="model_or_path must be a model instance, a folder or a Hub id, got int"):
        export_onnx(3, out)
    with pytest.raises(
        ValueError, match=r"torch.float16 on cpu; export a float32 CPU model \(model.float\(\).cpu\(\)\)"
    ):
        export_onnx(tiny_model("vit").half(), out)
    assert not out.exists()


def test_bad_outputs(tmp_path, saved_vit):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="output .* is not empty; pass overwrite=True"):
        export_onnx(saved_vit, out)
    assert os.listdir(out) == ["mine.txt"]
    with pytest.raises(ValueError, match="is the folder the model was loaded from"):
        export_onnx(saved_vit, saved_vit, overwrite=True)
    with pytest.raises(ValueError, match="exists and is not a folder"):
        export_onnx(saved_vit, out / "mine.txt")


def test_missing_onnxruntime(tmp_path, saved_vit, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ImportError, match=r"needs the `onnxruntime` package.*pip install 'optimum-snp\[onnx\]'"):
        export_onnx(saved_vit, tmp_path / "out")
    with pytest.raises(ImportError, match="onnxruntime"):
        onnx_session(tmp_path)
    assert not (tmp_path / "out").exists()


def test_cli_errors_are_one_line(tmp_path, saved_vit, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert cli_main(["export", "onnx", "--model", str(saved_vit), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: output") and "--overwrite" in err and err.count("\n") == 1
    assert (
        cli_main(["export", "onnx", "--model", str(saved_vit), "--output", str(tmp_path / "x"), "--opset", "12"]) == 2
    )
    assert "opset must be an integer >= 18" in capsys.readouterr().err
    assert os.listdir(out) == ["mine.txt"] and not (tmp_path / "x").exists()
