"""push_pruned_model with the real huggingface_hub client against a loopback Hub (tests/hub_server.py)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from PIL import Image

from optimum_snp import SNPConfig, SNPPruner
from optimum_snp.hub import HubPushError, push_pruned_model

from .conftest import logits_of, pixel_values, tiny_model
from .hub_server import TEST_TOKEN, TEST_USER, HubServer


LFS_CALLS = ("/info/lfs/objects/batch", "/lfs-upload/")


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """(pruned model, its save_dir), with a model card and its figure if the pruner did not write them."""
    folder = tmp_path_factory.mktemp("hub") / "pruned"
    model = SNPPruner(tiny_model("deit-teacher")).prune(
        SNPConfig(qk_ratio=0.5, criterion="magnitude", reconstruct="none"), save_dir=str(folder), show_progress=False
    )
    if not (folder / "README.md").exists():
        (folder / "README.md").write_text("---\nlibrary_name: transformers\ntags:\n- snp\n---\n\n# Tiny SNP DeiT\n")
    if not (folder / "pruning_profile.png").exists():
        Image.new("RGB", (8, 4), (200, 30, 30)).save(folder / "pruning_profile.png")
    return model, folder


@pytest.fixture
def hub(monkeypatch):
    """A loopback Hub, with the client online (other tests set HF_HUB_OFFLINE) and Xet off so that "lfs" files
    take the LFS batch API."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    with HubServer() as server:
        yield server


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("transfer", ["lfs", "regular"])
def test_push_stores_every_file(transfer, pruned, hub, monkeypatch):
    _, folder = pruned
    before = snapshot(folder)
    if transfer == "regular":
        # every file inlined in the commit: works with the default client config, Xet installed or not
        hub.lfs = False
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    url = push_pruned_model(folder, "tiny-snp", token=TEST_TOKEN, private=True, endpoint=hub.endpoint)

    repo_id = f"{TEST_USER}/tiny-snp"
    repo = hub.repos[repo_id]
    assert url == f"{hub.endpoint}/{repo_id}/commit/{repo.head}"
    assert hub.files(repo_id) == before  # every file, same bytes
    assert {"README.md", "pruning_profile.png", "snp_config.json", "modeling_snp.py"} <= set(before)
    assert repo.private and [c["summary"] for c in repo.commits] == ["Upload SNP-pruned model"]
    lfs_calls = [call for call in hub.paths_called() if any(part in call for part in LFS_CALLS)]
    if transfer == "lfs":
        assert repo.lfs_paths == {"model.safetensors", "pruning_profile.png"}
        assert len(lfs_calls) == 3  # one batch, one PUT per file
    else:
        assert not repo.lfs_paths and not lfs_calls

    # pushing the same folder again is a no-op: the repo exists (409 is fine) and nothing changed
    assert push_pruned_model(folder, repo_id, token=TEST_TOKEN, endpoint=hub.endpoint) == url
    assert len(repo.commits) == 1
    assert snapshot(folder) == before


# Runs with optimum_snp made unimportable: only the files pushed to the Hub may be used.
_REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["optimum_snp"] = None  # `import optimum_snp` now raises ImportError
    import torch
    from transformers import AutoModelForImageClassification
    model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        torch.save(model(torch.load(sys.argv[2])).logits, sys.argv[3])
    """
)


def test_pushed_model_loads_without_optimum_snp(pruned, hub, tmp_path):
    model, folder = pruned
    push_pruned_model(folder, f"{TEST_USER}/tiny-snp", token=TEST_TOKEN, endpoint=hub.endpoint)
    download = tmp_path / "download"
    download.mkdir()
    for path, content in hub.files(f"{TEST_USER}/tiny-snp").items():
        (download / path).write_bytes(content)
    x = pixel_values()
    torch.save(x, tmp_path / "x.pt")
    (tmp_path / "load.py").write_text(_REMOTE_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "load.py", str(download), "x.pt", "out.pt"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    model.set_attn_implementation("sdpa")  # the reloaded model's default
    assert torch.equal(torch.load(tmp_path / "out.pt"), logits_of(model, x))


def test_wrong_token(pruned, hub):
    _, folder = pruned
    before = snapshot(folder)
    with pytest.raises(HubPushError, match="401") as info:
        push_pruned_model(folder, "tiny-snp", token="hf_not_the_right_one", endpoint=hub.endpoint)
    assert info.value.status_code == 401
    assert "token" in str(info.value) and "hf auth login" in str(info.value)
    assert not hub.repos and snapshot(folder) == before


def test_no_token(pruned, hub, monkeypatch, tmp_path):
    _, folder = pruned
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(HubPushError, match=r"No Hugging Face token: run `hf auth login` or pass token="):
        push_pruned_model(folder, "tiny-snp", endpoint=hub.endpoint)
    assert hub.requests == []  # refused before any call


def test_unreachable_endpoint(pruned, hub):
    _, folder = pruned
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    before = snapshot(folder)
    with pytest.raises(HubPushError, match=f"Could not reach {closed}") as info:
        push_pruned_model(folder, "tiny-snp", token=TEST_TOKEN, endpoint=closed)
    assert f"The model is saved locally in {folder}" in str(info.value)
    assert info.value.status_code is None
    assert snapshot(folder) == before


@pytest.mark.parametrize(("status", "words"), [(404, "not found"), (403, "write access")])
def test_hub_refuses_the_repo(status, words, pruned, hub):
    _, folder = pruned
    hub.fail(f"{TEST_USER}/elsewhere", status)
    before = snapshot(folder)
    with pytest.raises(HubPushError, match=str(status)) as info:
        push_pruned_model(folder, f"{TEST_USER}/elsewhere", token=TEST_TOKEN, endpoint=hub.endpoint)
    assert info.value.status_code == status
    assert words in str(info.value) and f"{TEST_USER}/elsewhere" in str(info.value)
    assert snapshot(folder) == before


@pytest.mark.parametrize("missing", ["model.safetensors", "config.json"])
def test_folder_without_model_files(missing, pruned, hub, tmp_path):
    _, folder = pruned
    partial = tmp_path / "partial"
    shutil.copytree(folder, partial)
    (partial / missing).unlink()
    with pytest.raises(ValueError, match=missing):
        push_pruned_model(partial, "tiny-snp", token=TEST_TOKEN, endpoint=hub.endpoint)
    with pytest.raises(ValueError, match="is not a folder"):
        push_pruned_model(tmp_path / "nowhere", "tiny-snp", token=TEST_TOKEN, endpoint=hub.endpoint)
    assert hub.requests == []


def test_model_push_to_hub_uploads_card_plot_processor_and_pruning_files(pruned, hub, tmp_path):
    model, folder = pruned
    url = model.push_to_hub("pushed", token=TEST_TOKEN, endpoint=hub.endpoint, commit_message="from the model")
    files = hub.files(f"{TEST_USER}/pushed")
    assert url.startswith(f"{hub.endpoint}/{TEST_USER}/pushed/commit/")
    expected = {"config.json", "model.safetensors", "modeling_snp.py", "configuration_snp.py", "snp_config.json"}
    expected |= {"pruning_plan.json", "pruning_report.json", "preprocessor_config.json", "README.md"}
    assert expected | {"pruning_profile.png"} <= set(files)
    assert json.loads(files["config.json"])["auto_map"]["AutoModelForImageClassification"].startswith("modeling_snp.")
    card = files["README.md"].decode()
    assert "optimum-snp" in card and "![pruning profile](pruning_profile.png)" in card
    assert files["snp_config.json"] == (folder / "snp_config.json").read_bytes()


def test_save_pretrained_push_to_hub_pushes_the_saved_folder(pruned, hub, tmp_path, monkeypatch):
    model, _ = pruned
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    model.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id="saved-and-pushed", token=TEST_TOKEN)
    assert hub.files(f"{TEST_USER}/saved-and-pushed") == snapshot(tmp_path / "local")
    assert "README.md" in hub.files(f"{TEST_USER}/saved-and-pushed")


def test_cli_push_to_hub(hub, tmp_path):
    tiny_model("vit", num_labels=10).save_pretrained(tmp_path / "model")
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_TOKEN": TEST_TOKEN,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    env.pop("HF_HUB_OFFLINE", None)
    args = [
        "--model",
        str(tmp_path / "model"),
        "--criterion",
        "magnitude",
        "--reconstruct",
        "none",
        "--qk-ratio",
        "0.5",
    ]
    args += ["--output-dir", str(tmp_path / "out"), "--no-progress", "--push-to-hub", "cli-pushed"]
    result = subprocess.run(
        [sys.executable, "-m", "optimum_snp", *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{hub.endpoint}/{TEST_USER}/cli-pushed/commit/" in result.stdout
    assert hub.files(f"{TEST_USER}/cli-pushed") == snapshot(tmp_path / "out")

    # a Hub error is one clear line, exit status 2, and the local save is kept
    env["HF_TOKEN"] = "hf_wrong"
    args[args.index(str(tmp_path / "out"))] = str(tmp_path / "out2")
    result = subprocess.run(
        [sys.executable, "-m", "optimum_snp", *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 2
    assert "401" in result.stderr and f"The model is saved locally in {tmp_path / 'out2'}" in result.stderr
    assert (tmp_path / "out2" / "model.safetensors").is_file()
