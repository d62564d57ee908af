"""`snp-prune` and `optimum-cli snp prune` on tiny local models and tiny local image folders."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from transformers import AutoModelForImageClassification

import optimum_snp  # noqa: F401
from optimum_snp.cli import main, parse_criterion

from .conftest import logits_of, pixel_values, tiny_model


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tiny_model("vit", num_labels=10).save_pretrained(root / "model")
    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images[:24], digits.target[:24], strict=True)):
        folder = root / "images" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255 / 16).round().astype(np.uint8)).convert("RGB").save(folder / f"{i}.png")
    return root


def _entry_point(name):
    path = shutil.which(name, path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    assert path, f"{name} is not installed (pip install -e .)"
    return path


@pytest.mark.parametrize(
    "command",
    [["snp-prune"], ["optimum-cli", "snp", "prune"]],
    ids=["snp-prune", "optimum-cli"],
)
def test_entry_points_prune_a_local_model(workspace, tmp_path, command):
    out = tmp_path / "out"
    args = [
        _entry_point(command[0]), *command[1:],
        "--model", str(workspace / "model"),
        "--dataset", str(workspace / "images"),
        "--num-samples", "12", "--batch-size", "4",
        "--target-macs-ratio", "0.6", "--head-ratio", "0.25",
        "--criterion", "qk=svd,v=contribution",
        "--eval-split", "train",
        "--output-dir", str(out), "--no-progress",
    ]  # fmt: skip
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "top-1 pruned, no reconstruction" in result.stdout and "qk=svd" in result.stdout
    assert "top-1 pruned (least_squares reconstruction, no fine-tuning)" in result.stdout
    model = AutoModelForImageClassification.from_pretrained(out)
    assert model.config.num_heads_per_layer == [3, 3, 3]
    assert {"snp_config.json", "pruning_report.json", "preprocessor_config.json"} <= set(os.listdir(out))


def test_cli_errors_are_one_line_and_write_nothing(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    status = main(
        [
            "--model",
            str(workspace / "model"),
            "--dataset",
            str(workspace / "images"),
            "--qk-ratio",
            "0.5",
            "--output-dir",
            str(out),
            "--no-progress",
        ]
    )
    assert status == 2
    assert "is not empty; pass overwrite=True (CLI: --overwrite)" in capsys.readouterr().err
    assert os.listdir(out) == ["mine.txt"]
    status = main(
        [
            "--model",
            str(workspace / "model"),
            "--dataset",
            str(workspace / "images"),
            "--qk-ratio",
            "1.5",
            "--output-dir",
            str(tmp_path / "o2"),
            "--no-progress",
        ]
    )
    assert status == 2 and "`qk_ratio` must be a fraction" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()
    status = main(
        [
            "--model",
            str(workspace / "model"),
            "--dataset",
            str(workspace / "images"),
            "--image-column",
            "photo",
            "--qk-ratio",
            "0.5",
            "--output-dir",
            str(tmp_path / "o3"),
            "--no-progress",
        ]
    )
    assert status == 2 and "photo" in capsys.readouterr().err


def test_per_layer_ratios_and_overwrite(workspace, tmp_path):
    out = tmp_path / "out"
    for _ in range(2):  # the second run replaces the first
        status = main(
            [
                "--model",
                str(workspace / "model"),
                "--dataset",
                str(workspace / "images"),
                "--mlp-ratio",
                "0.5",
                "0.25",
                "0",
                "--criterion",
                "magnitude",
                "--output-dir",
                str(out),
                "--overwrite",
                "--no-progress",
            ]
        )
        assert status == 0
    assert AutoModelForImageClassification.from_pretrained(out).config.intermediate_sizes == [24, 36, 48]


def test_embedded_default(monkeypatch, tmp_path, capsys):
    """Without --model: the digits ViT (here a 1-epoch stand-in), digits train/test splits, half the MACs."""
    from optimum_snp import embedded

    model_dir = tmp_path / "digits-vit"
    embedded.train_digits_vit(str(model_dir), epochs=1, show_progress=False)
    monkeypatch.setattr(embedded, "load_embedded_model", lambda **kw: str(model_dir))
    status = main(
        ["--output-dir", str(tmp_path / "out"), "--num-samples", "16", "--finetune-epochs", "1", "--no-progress"]
    )
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "top-1 original" in printed and "top-1 fine-tuned" in printed
    assert "top-1 pruned, no reconstruction" in printed and "top-1 pruned (least_squares reconstruction" in printed
    from huggingface_hub import metadata_load

    card = metadata_load(tmp_path / "out" / "README.md")
    names = [m["name"] for r in card["model-index"][0]["results"] for m in r["metrics"]]
    assert len(names) >= 4 and any("fine-tuning" in n for n in names), names
    assert any("before reconstruction" in n for n in names), names
    report_macs = [line for line in printed.splitlines() if line.startswith("MACs")][0]
    kept = float(report_macs.split("(")[1].split("%")[0]) / 100
    assert 0.49 <= kept <= 0.51
    pruned = AutoModelForImageClassification.from_pretrained(tmp_path / "out", attn_implementation="eager")
    assert logits_of(pruned, pixel_values(size=32)).shape == (3, 10)


def test_parse_criterion():
    assert parse_criterion("snp") == "snp"
    assert parse_criterion("qk=svd, v=redundancy") == {"qk": "svd", "v": "redundancy"}
    with pytest.raises(ValueError, match="Cannot read criterion"):
        parse_criterion("qk=")


def test_refit_and_allocation_options_reach_the_config():
    import argparse

    from optimum.commands.register.register_snp import add_prune_arguments
    from optimum_snp.cli import config_from_args

    parser = argparse.ArgumentParser()
    add_prune_arguments(parser)
    args = parser.parse_args(
        ["--target-macs-ratio", "0.5", "--ridge", "cv", "--refit-target", "residual", "--allocation", "sensitivity"]
    )
    config = config_from_args(args)
    assert (config.ridge, config.refit_target, config.allocation) == ("cv", "residual", "sensitivity")
    assert config.sensitivity_candidate is None  # the architecture's default
    config = config_from_args(parser.parse_args(["--ridge", "0.1"]))
    assert (config.ridge, config.refit_target, config.allocation) == (0.1, None, "validated")
    for flag, value in (("off", False), ("on", True)):
        assert config_from_args(parser.parse_args(["--sensitivity-candidate", flag])).sensitivity_candidate is value
    with pytest.raises(SystemExit):  # argparse's own error: not a number nor 'cv'
        parser.parse_args(["--ridge", "auto"])
