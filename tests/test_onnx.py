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
    args += ["--quantize", "dynamic"]  # optimum-cli takes the same options as `python -m optimum_snp export onnx`
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max abs diff" in result.stdout and "pixel_values (dynamic batch axis)" in result.stdout
    assert "int8 model" in result.stdout
    assert sorted(os.listdir(out)) == ["config.json", "model.onnx", "model_quantized.onnx", "preprocessor_config.json"]

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


# ---- int8: quantize="dynamic" (onnxruntime dynamic quantization), checked against the float model --------------
def labelled_images(model: nn.Module, processor, count: int = 24):
    """Random 32x32 images labelled with `model`'s own predictions: the float ONNX model must score 100% on them."""
    import PIL.Image
    from datasets import ClassLabel, Dataset, Features, Image

    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(count)]
    labels = logits_of(model, processor(images, return_tensors="pt")["pixel_values"]).argmax(-1).tolist()
    features = Features({"image": Image(), "label": ClassLabel(num_classes=model.config.num_labels)})
    return Dataset.from_dict({"image": images, "label": labels}, features=features)


def negated_logits(path, output_path) -> None:
    """A stand-in for a broken int8 model: the float graph with its logits negated (its argmax never agrees)."""
    graph_model = onnx.load(path)
    graph = graph_model.graph
    for node in graph.node:
        node.output[:] = ["logits_raw" if name == "logits" else name for name in node.output]
    graph.node.append(onnx.helper.make_node("Neg", ["logits_raw"], ["logits"]))
    onnx.save(graph_model, output_path)


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory):
    """A pruned SNP ViT, exported with quantize="dynamic" and checked on a labelled dataset (shared)."""
    model = pruned_model("vit", seed=1)
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    dataset = labelled_images(model, processor)
    output = tmp_path_factory.mktemp("int8") / "out"
    result = export_onnx(model, output, quantize="dynamic", validation_dataset=dataset, image_processor=processor)
    return model, processor, dataset, result


def test_int8_export_checked_on_a_labelled_dataset(int8_export):
    model, processor, dataset, result = int8_export
    assert result.max_abs_diff <= ATOL  # the float model is still held to atol against PyTorch
    assert result.files == ["config.json", "model.onnx", "model_quantized.onnx", "preprocessor_config.json"]
    assert result.quantize == "dynamic" and result.int8_path == os.path.join(result.output_dir, "model_quantized.onnx")
    assert result.int8_bytes == os.path.getsize(result.int8_path) < result.float_bytes == os.path.getsize(result.path)
    ops = onnx_ops(result.int8_path)
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops and "MatMulInteger" not in onnx_ops(result.path)
    scales = [i for i in onnx.load(result.int8_path).graph.initializer if i.name.endswith("_scale")]
    assert scales and all(len(s.dims) == 1 and s.dims[0] > 1 for s in scales)  # one scale per output channel

    assert result.int8_checked_on == "validation_dataset" and result.int8_num_samples == len(dataset)
    assert result.float_top1 == 1.0  # the labels are the model's own predictions
    session = onnx_session(result.int8_path)
    pixels = processor(list(dataset["image"]), return_tensors="np")["pixel_values"]
    int8_logits = run_onnx(session, pixels)["logits"]
    predictions = int8_logits.argmax(-1)
    assert result.int8_top1 == pytest.approx(float((predictions == np.array(dataset["label"])).mean()))
    assert result.int8_agreement == pytest.approx(result.int8_top1) and 0.5 <= result.int8_agreement <= 1
    float_logits = run_onnx(onnx_session(result.path), pixels)["logits"]
    assert 0 < np.abs(int8_logits - float_logits).max() < 0.2 * np.abs(float_logits).max()
    assert 0 < result.int8_max_rel_error < 0.2


def test_int8_agreement_is_measured_and_can_gate(int8_export, tmp_path, monkeypatch):
    model, processor, dataset, exported = int8_export
    # skip the real export (the float graph of this model is known) and quantize to a model that never agrees
    monkeypatch.setattr(onnx_exporter, "_torch_export", lambda *args: shutil.copy(exported.path, args[1]))
    monkeypatch.setattr(onnx_exporter, "quantize_dynamic_onnx", negated_logits)
    # reported, not failed on, by default
    result = export_onnx(
        model, tmp_path / "a", quantize="dynamic", validation_dataset=dataset, image_processor=processor
    )
    assert result.int8_checked_on == "validation_dataset" and result.int8_num_samples == len(dataset)
    assert result.int8_agreement == 0.0 and result.int8_top1 == 0.0 and result.float_top1 == 1.0
    assert result.int8_max_rel_error > 1  # -x is 2|x| away from x
    result = export_onnx(model, tmp_path / "b", quantize="dynamic")
    assert result.int8_checked_on == "example inputs" and result.int8_num_samples == 32
    assert result.int8_agreement == 0.0 and result.float_top1 is None and result.int8_top1 is None

    # the gate fails after quantizing, and leaves nothing behind
    with pytest.raises(OnnxValidationError, match=r"agrees with the float model on 0.00% of 32 example inputs"):
        export_onnx(model, tmp_path / "gated", quantize="dynamic", min_int8_agreement=0.5)
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]  # neither the output nor the temporary folder


def test_cli_quantize_flag(tmp_path, saved_vit, capsys):
    out = tmp_path / "out"
    assert cli_main(["export", "onnx", "--model", str(saved_vit), "--output", str(out), "--quantize", "dynamic"]) == 0
    printed = capsys.readouterr().out
    assert "model_quantized.onnx (dynamic quantization, int8 MatMul weights per channel;" in printed
    assert "top-1 agreement" in printed and "on 32 example inputs, max relative logit error" in printed
    assert sorted(os.listdir(out)) == ["config.json", "model.onnx", "model_quantized.onnx"]
    x = pixel_values(batch=3, seed=2)
    got = run_onnx(onnx_session(out / "model_quantized.onnx"), x)["logits"]
    assert got.shape == (3, 5) and np.isfinite(got).all()

    with pytest.raises(SystemExit):  # argparse: not one of the choices
        cli_main(["export", "onnx", "--model", str(saved_vit), "--output", str(tmp_path / "x"), "--quantize", "qdq"])
    assert "invalid choice: 'qdq' (choose from 'dynamic')" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(quantize="static"), r"quantize must be None \(float model only\) or 'dynamic'"),
        (dict(quantize=True), r"quantize must be None .* got True"),
        (dict(quantize="dynamic", min_int8_agreement=1.5), r"min_int8_agreement must be a number in \[0, 1\]"),
        (dict(validation_dataset="images"), "check the int8 model; pass quantize='dynamic'"),
        (dict(quantize="dynamic", validation_dataset="images", validate=False), "need validate=True"),
        (dict(quantize="dynamic", validation_dataset="images"), "needs the model's image processor"),
    ],
)
def test_bad_quantize_options(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        export_onnx(tiny_model("vit"), tmp_path / "out", **kwargs)
    assert os.listdir(tmp_path) == []


def test_labelled_dataset_needs_a_classifier(tmp_path):
    with pytest.raises(ValueError, match=r"top-1 of an image classifier; ViTModel has outputs \['last_hidden_state'"):
        export_onnx(tiny_model("vit-base"), tmp_path / "out", quantize="dynamic", validation_dataset="images")
    assert os.listdir(tmp_path) == []


def test_quantize_without_onnxruntime(tmp_path, saved_vit, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)
    with pytest.raises(
        ImportError,
        match=r"Quantizing the ONNX model \(quantize='dynamic'\) needs the `onnxruntime` package.*"
        r"pip install 'optimum-snp\[onnx\]'",
    ):
        export_onnx(saved_vit, tmp_path / "out", validate=False, quantize="dynamic")
    assert not (tmp_path / "out").exists()
