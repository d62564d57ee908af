"""What a pruned model carries besides its weights, written next to them on every save.

`SNPPruner.prune` attaches a `PruningInfo` to the model it returns: the `SNPConfig`, the pruning plan and report, the
image processor, the source model and the accuracies measured so far (add some with `record_results`). The SNP
model classes call into this module (when optimum-snp is installed) so that:

- every `save_pretrained` (so also `Trainer.save_model` and Trainer checkpoints) writes `snp_config.json`,
  `pruning_plan.json`, `pruning_report.json`, the image processor, and the model card `README.md` with its
  pruning-profile plot, updated rather than overwritten;
- `from_pretrained` of a folder (or Hub repo) reads them back;
- `push_to_hub` uploads all of it (transformers' own `push_to_hub` would replace the card with a generic one).

The model files themselves know nothing of this (they are copied next to checkpoints for `trust_remote_code=True`
and must import only their siblings): `install_pruning_io` wraps their `from_pretrained` / `save_pretrained` /
`push_to_hub` from the package's side when `optimum_snp` is imported.

A model without pruning info (e.g. built with `apply_plan` directly) still gets a card, with the original sizes
read from its config (`num_attention_heads`, `intermediate_size` and `original_head_dim` keep the unpruned values).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from .accounting import architecture_of, model_size
from .adapters import adapter_class_for, on_register
from .card import CARD_NAME, _clean_results, _merge_results, _previous_card, write_model_card
from .config import SNP_CONFIG_NAME, SNPConfig
from .plan import PruningPlan
from .report import build_report


logger = logging.getLogger(__name__)

PLAN_NAME = "pruning_plan.json"
REPORT_NAME = "pruning_report.json"
PROCESSOR_NAME = "preprocessor_config.json"
TOKENIZER_NAME = "tokenizer_config.json"
INFO_ATTRIBUTE = "snp_pruning_info"


@dataclass
class PruningInfo:
    """How a model was pruned and what was measured on it; `SNPPruner.prune` attaches one to the pruned model."""

    snp_config: SNPConfig | None = None
    report: dict | None = None
    plan: PruningPlan | None = None
    image_processor: Any = None  # the preprocessor: an image processor, or a tokenizer for text models
    base_model: str | None = None
    results: dict = field(default_factory=dict)
    name: str | None = None  # the model's name in its card (repo id or final folder), when not the folder's own
    source: str | None = None  # the folder or Hub id the unpruned model came from (its companion files are kept)


def get_pruning_info(model) -> PruningInfo | None:
    return getattr(model, INFO_ATTRIBUTE, None)


def attach_pruning_info(model, info: PruningInfo) -> None:
    # set through object.__setattr__: a plain attribute, not a submodule or parameter of the nn.Module
    object.__setattr__(model, INFO_ATTRIBUTE, info)


def record_results(model, results: dict) -> dict:
    """Adds accuracies to what `model` carries (as in `card.write_model_card`: {"fine-tuned": {"top1": ...},
    "dataset": {...}}); the next `save_pretrained` / `push_to_hub` shows them in the card. Returns all results."""
    info = get_pruning_info(model)
    if info is None:
        info = PruningInfo()
        attach_pruning_info(model, info)
    info.results = _merge_results(info.results, _clean_results(results))
    return info.results


# ---- saving ------------------------------------------------------------------------------------------------
def report_from_config(model) -> dict:
    """A pruning report (as `SNPPruner.report`) from the model's config alone: the per-layer dims now, against the
    unpruned ones the SNP config keeps for reference."""
    config = model.config
    architecture = architecture_of(model)
    adapter_cls = adapter_class_for(config)
    original_hidden, before = adapter_cls.original_dims(config)
    after = adapter_cls.dims_from_config(config)
    return build_report(
        source=getattr(config, "_name_or_path", None) or None,
        architecture=type(model).__name__,
        size_before=model_size(config, architecture, hidden_size=original_hidden, layer_dims=before),
        size_after=model_size(config, architecture),
        hidden_before=original_hidden,
        hidden_after=config.hidden_size,
        dims_before=before,
        dims_after=after,
    )


def save_pruning_info(model, save_directory: str | os.PathLike) -> None:
    """Writes what `model` carries from pruning, and the model card with its plot, into `save_directory`."""
    save_directory = os.fspath(save_directory)
    info = get_pruning_info(model) or PruningInfo()
    if info.snp_config is not None:
        info.snp_config.save_pretrained(save_directory)
    if info.plan is not None:
        info.plan.save(os.path.join(save_directory, PLAN_NAME))
    report = info.report or report_from_config(model)
    if info.report is not None:
        with open(os.path.join(save_directory, REPORT_NAME), "w") as f:
            json.dump(info.report, f, indent=2)
    if info.image_processor is not None:
        info.image_processor.save_pretrained(save_directory)
    if info.source is not None:
        copy_sentence_transformers_files(info.source, save_directory)
    config = (
        info.snp_config.to_dict() if info.snp_config is not None else {"note": "pruning configuration not recorded"}
    )
    write_model_card(
        save_directory, report, config, results=info.results or None, base_model=info.base_model, name=info.name
    )


SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def copy_sentence_transformers_files(source: str, save_directory: str) -> list[str]:
    """When `source` (a folder or Hub id) is a sentence-transformers model, copies its module description and the
    module folders after the transformer (pooling, normalisation, ...) next to the pruned weights, so that
    `SentenceTransformer(save_directory)` loads the pruned model as one. Returns the files copied."""
    import shutil

    modules_path = _fetch(source, "modules.json", {})
    if modules_path is None:
        return []
    with open(modules_path) as f:
        modules = json.load(f)
    wanted = list(SENTENCE_TRANSFORMERS_FILES)
    for module in modules:
        folder = module.get("path") or ""
        if folder and os.path.isdir(os.path.join(source, folder)):
            wanted += [os.path.join(folder, n) for n in sorted(os.listdir(os.path.join(source, folder)))]
        elif folder:  # a Hub repo: the modules sentence-transformers ships keep a config.json
            wanted.append(f"{folder}/config.json")
    copied = []
    for name in wanted:
        path = _fetch(source, name, {})
        if path is not None and os.path.isfile(path):
            target = os.path.join(save_directory, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(path, target)
            copied.append(name)
    return copied


def save_pretrained_with_info(save_weights, model, save_directory, *args, **kwargs):
    """`PreTrainedModel.save_pretrained` (`save_weights`), then the pruning files and card; `push_to_hub=True` then
    uploads the whole folder (so the card is ours, not transformers' generic one)."""
    push = kwargs.pop("push_to_hub", False)
    repo_id = kwargs.pop("repo_id", None)
    hub = {k: kwargs.pop(k) for k in ("commit_message", "private", "revision", "create_pr") if k in kwargs}
    result = save_weights(save_directory, *args, **kwargs)
    is_main_process = kwargs.get("is_main_process", args[0] if args else True)
    if not is_main_process:
        return result
    save_pruning_info(model, save_directory)
    if push:
        from .hub import push_pruned_model

        repo_id = repo_id or os.path.basename(os.path.abspath(os.fspath(save_directory)))
        token = kwargs.get("token")
        push_pruned_model(save_directory, repo_id, token=token if isinstance(token, str) else None, **hub)
    return result


def push_model(
    model,
    repo_id: str,
    *,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    max_shard_size: int | str = "50GB",
    revision: str | None = None,
    create_pr: bool = False,
    endpoint: str | None = None,
    **unsupported,
) -> str:
    """`model.push_to_hub(repo_id)` of an SNP model: saves it (weights, config with `auto_map`, modeling files,
    pruning files, image processor, card and plot) into a temporary folder and uploads that folder with
    `push_pruned_model`. Returns the commit URL; errors are `HubPushError`s."""
    from .hub import push_pruned_model

    if unsupported:
        raise ValueError(
            f"push_to_hub of an SNP model does not support {sorted(unsupported)}; supported: commit_message, "
            "private, token, max_shard_size, revision, create_pr, endpoint."
        )
    info = get_pruning_info(model)
    if info is None:
        info = PruningInfo()
        attach_pruning_info(model, info)
    previous, info.name = info.name, repo_id
    try:
        with tempfile.TemporaryDirectory(prefix="snp-push-") as tmp:
            model.save_pretrained(tmp, max_shard_size=max_shard_size)
            return push_pruned_model(
                tmp,
                repo_id,
                token=token if isinstance(token, str) else None,
                private=bool(private),
                commit_message=commit_message or "Upload SNP-pruned model",
                endpoint=endpoint,
                revision=revision,
                create_pr=create_pr,
            )
    finally:
        info.name = previous


# ---- the model classes' side -------------------------------------------------------------------------------
def install_pruning_io(cls: type) -> type:
    """Makes the SNP model class `cls` (and its subclasses) save, load and push its pruning info and model card:
    `from_pretrained` then `load_pruning_info`; `save_pretrained` through `save_pretrained_with_info`; `push_to_hub`
    through `push_model`. Idempotent."""
    if cls.__dict__.get("_snp_pruning_io"):
        return cls
    load, save = cls.from_pretrained.__func__, cls.save_pretrained

    @functools.wraps(load)
    def from_pretrained(klass, *args, **kwargs):
        model = load(klass, *args, **kwargs)
        load_pruning_info(model, args[0] if args else kwargs.get("pretrained_model_name_or_path"), **kwargs)
        return model

    @functools.wraps(save)
    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, then `snp_config.json`, the pruning plan and report, the preprocessor
        and the model card (`README.md` + `pruning_profile.png`)."""
        return save_pretrained_with_info(lambda *a, **k: save(self, *a, **k), self, save_directory, *args, **kwargs)

    def push_to_hub(self, repo_id: str, *args, **kwargs):
        """Uploads everything `save_pretrained` writes, keeping the SNP model card (transformers' would replace it)."""
        return push_model(self, repo_id, *args, **kwargs)

    cls.from_pretrained = classmethod(from_pretrained)
    cls.save_pretrained = save_pretrained
    cls.push_to_hub = push_to_hub
    cls._snp_pruning_io = True
    return cls


def _install_on_family(adapter_cls) -> None:
    """`install_pruning_io` on the topmost SNP class of every model family the adapter serves."""
    from transformers import PreTrainedModel

    for snp_cls in adapter_cls.snp_model_classes():
        family = [c for c in snp_cls.__mro__ if issubclass(c, PreTrainedModel) and c.__module__ == snp_cls.__module__]
        install_pruning_io(family[-1])


on_register(_install_on_family)


# ---- loading -----------------------------------------------------------------------------------------------
def _fetch(source: str, name: str, hub_kwargs: dict) -> str | None:
    """Local path of `name` in the folder or Hub repo `source`, or None when it has none."""
    if os.path.isdir(source):
        path = os.path.join(source, name)
        return path if os.path.isfile(path) else None
    try:
        from transformers.utils import cached_file

        return cached_file(
            source,
            name,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **hub_kwargs,
        )
    except Exception as err:  # the weights loaded, so a missing side file must not fail the load
        logger.info("Could not fetch %s from %s: %s", name, source, err)
        return None


def load_pruning_info(model, source, **kwargs) -> None:
    """Attaches to `model` the pruning info saved in the folder or Hub repo `source` (nothing when it has none)."""
    if not isinstance(source, (str, os.PathLike)):
        return
    source = os.fspath(source)
    hub_kwargs = {
        k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder") if k in kwargs
    }
    info = PruningInfo(source=source)  # its companion files (e.g. sentence-transformers modules) are saved again
    if path := _fetch(source, SNP_CONFIG_NAME, hub_kwargs):
        info.snp_config = SNPConfig.from_pretrained(path)
    if path := _fetch(source, PLAN_NAME, hub_kwargs):
        info.plan = PruningPlan.load(path)
    if path := _fetch(source, REPORT_NAME, hub_kwargs):
        with open(path) as f:
            info.report = json.load(f)
    if path := _fetch(source, CARD_NAME, hub_kwargs):
        info.results, metadata = _previous_card(path)
        info.base_model = metadata.get("base_model")
    if _fetch(source, PROCESSOR_NAME, hub_kwargs):
        from transformers import AutoImageProcessor

        info.image_processor = AutoImageProcessor.from_pretrained(source, **hub_kwargs)
    elif _fetch(source, TOKENIZER_NAME, hub_kwargs):
        from transformers import AutoTokenizer

        info.image_processor = AutoTokenizer.from_pretrained(source, **hub_kwargs)
    attach_pruning_info(model, info)


__all__ = [
    "PruningInfo",
    "attach_pruning_info",
    "get_pruning_info",
    "install_pruning_io",
    "load_pruning_info",
    "push_model",
    "record_results",
    "report_from_config",
    "save_pruning_info",
]
