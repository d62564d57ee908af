"""save_pretrained -> Auto*.from_pretrained round trips, with optimum_snp imported and via trust_remote_code."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

import optimum_snp  # noqa: F401  (registers the Auto classes)
from optimum_snp import apply_plan

from .conftest import logits_of, pixel_values, random_plan, tiny_model


def _pruned(kind, seed=0):
    model = tiny_model(kind, seed=seed)
    return apply_plan(model, random_plan(model, seed=seed, hidden=True))


@pytest.mark.parametrize("kind", ["vit", "deit", "deit-teacher"])
def test_round_trip_after_import(kind, tmp_path):
    pruned = _pruned(kind)
    pruned.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "modeling_snp.py", "configuration_snp.py"} <= files
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == [type(pruned).__name__]
    assert config["auto_map"]["AutoModelForImageClassification"] == f"modeling_snp.{type(pruned).__name__}"
    assert config["auto_map"]["AutoConfig"].startswith("configuration_snp.")
    assert config["qk_head_dims"] == pruned.config.qk_head_dims
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(pruned)
    assert loaded.config._attn_implementation == "sdpa"
    x = pixel_values()
    # bit-for-bit: same weights, same attention implementation
    pruned.set_attn_implementation("sdpa")
    assert torch.equal(logits_of(loaded, x), logits_of(pruned, x))
    for (name, a), (_, b) in zip(pruned.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_base_model_round_trip(tmp_path):
    pruned = _pruned("deit-base")
    pruned.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)).__name__ == "SNPDeiTConfig"
    loaded = AutoModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    pruned.set_attn_implementation("eager")
    x = pixel_values()
    assert torch.equal(loaded(x).last_hidden_state, pruned(x).last_hidden_state)


def test_config_json_is_readable(tmp_path):
    pruned = _pruned("vit")
    pruned.config.save_pretrained(tmp_path)
    text = (tmp_path / "config.json").read_text()
    data = json.loads(text)
    for key in ("num_heads_per_layer", "qk_head_dims", "v_head_dims", "intermediate_sizes", "original_head_dim"):
        assert key in data and f'"{key}"' in text
    assert data["model_type"] == "snp_vit"
    assert len(data["qk_head_dims"]) == data["num_hidden_layers"]


# Runs with optimum_snp made unimportable: only the files next to the weights may be used.
_REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["optimum_snp"] = None  # `import optimum_snp` now raises ImportError
    import torch
    from transformers import AutoModelForImageClassification
    try:
        import optimum_snp  # noqa
        raise SystemExit("optimum_snp should not be importable here")
    except ImportError:
        pass
    model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    x = torch.load(sys.argv[2])
    with torch.no_grad():
        torch.save(model(x).logits, sys.argv[3])
    print(type(model).__name__)
    """
)


@pytest.mark.parametrize("kind", ["vit", "deit-teacher"])
def test_round_trip_trust_remote_code_fresh_process(kind, tmp_path):
    pruned = _pruned(kind, seed=2)
    model_dir = tmp_path / "model"
    pruned.save_pretrained(model_dir)
    x = pixel_values()
    torch.save(x, tmp_path / "x.pt")
    script = tmp_path / "load.py"
    script.write_text(_REMOTE_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, str(script), str(model_dir), str(tmp_path / "x.pt"), str(tmp_path / "out.pt")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith(type(pruned).__name__)
    pruned.set_attn_implementation("sdpa")
    assert torch.equal(torch.load(tmp_path / "out.pt"), logits_of(pruned, x))


def test_image_classification_pipeline(tmp_path):
    from transformers import pipeline

    from optimum_snp import SNPConfig, SNPPruner
    from optimum_snp.embedded import digits_dataset

    pruner = SNPPruner(tiny_model("vit", num_labels=10))
    pruned = pruner.prune(
        SNPConfig(qk_ratio=0.5, criterion="magnitude", reconstruct="none"),
        save_dir=tmp_path / "m",
        show_progress=False,
    )
    pipe = pipeline("image-classification", model=str(tmp_path / "m"), top_k=3)
    image = digits_dataset()["test"][0]["image"]
    predictions = pipe(image)
    assert len(predictions) == 3 and {"label", "score"} <= set(predictions[0])
    pixels = pruner.image_processor(image.convert("RGB"), return_tensors="pt")["pixel_values"]
    pruned.set_attn_implementation("sdpa")
    expected = pruned.config.id2label[int(logits_of(pruned, pixels).argmax())]
    assert predictions[0]["label"] == expected
