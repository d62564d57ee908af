"""The modeling and configuration files of every pruned family are self-contained: copied alone into an empty folder
they import and build a model in a process where optimum_snp cannot be imported (what `trust_remote_code=True` does
on a machine without optimum-snp)."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

import pytest

import optimum_snp.models


MODELS_DIR = pathlib.Path(optimum_snp.models.__file__).parent
FAMILIES = sorted(p.stem for p in MODELS_DIR.glob("modeling_*.py"))

SCRIPT = textwrap.dedent(
    """
    import importlib, importlib.abc, inspect, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "optimum_snp" or name.startswith("optimum_snp."):
                raise ImportError("optimum_snp is not installed here")

    sys.meta_path.insert(0, Block())
    import torch
    from transformers import PreTrainedModel

    module = importlib.import_module("family.{module}")
    built = []
    for name, cls in vars(module).items():
        if inspect.isclass(cls) and issubclass(cls, PreTrainedModel) and cls.__module__ == module.__name__:
            if name.endswith("Model") and not name.endswith("PreTrainedModel"):
                with torch.device("meta"):
                    model = cls(cls.config_class())
                built.append(type(model).__name__)
    assert built, "no model class built"
    assert not any(m.startswith("optimum_snp") for m in sys.modules)
    print(" ".join(built))
    """
)


def test_every_family_is_found():
    assert {"modeling_snp", "modeling_snp_bert"} <= set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_modeling_files_alone_import_and_build(family, tmp_path):
    package = tmp_path / "family"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for path in [*MODELS_DIR.glob("configuration_*.py"), MODELS_DIR / f"{family}.py"]:
        (package / path.name).write_text(path.read_text())
    text = (package / f"{family}.py").read_text()
    assert "optimum_snp" not in text.replace("optimum-snp", "")  # no import of the package, even a guarded one
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(module=family)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split(), result.stdout
