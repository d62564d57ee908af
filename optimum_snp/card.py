"""Model card of a pruned model: `README.md` with Hub metadata, size and accuracy tables, and a pruning-profile plot.

`write_model_card(save_dir, report, snp_config, results)` writes `save_dir/README.md` and
`save_dir/pruning_profile.png`. The card is updated, not overwritten: accuracies from an earlier call (e.g. the
original and pruned model at prune time) are read back from the card's metadata (`snp_results`) and kept when a later
call adds another (e.g. after fine-tuning). The metadata carries a `model-index` built from `huggingface_hub.EvalResult`
objects, so the Hub shows the accuracies.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping
from numbers import Real

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .adapters import adapter_class_for_architecture
from .report import report_layers
from .version import __version__


CARD_NAME = "README.md"
PLOT_NAME = "pruning_profile.png"
RESULTS_KEY = "snp_results"  # card metadata key holding the accuracies, read back on the next update
DATASET_KEY = "dataset"
# result stages in table order, with their labels; other keys are shown after these, under their own name
STAGES = {
    "original": "Original model",
    "pruned, no reconstruction": "After SNP pruning, before reconstruction",
    "pruned": "After SNP pruning",
    "fine-tuned": "After fine-tuning",
}
BASE_TAGS = ["snp", "pruning", "optimum-snp"]
PAPER_URL = "https://arxiv.org/abs/2404.11630"
CITATION = """\
@inproceedings{shim2024snp,
  title     = {SNP: Structured Neuron-level Pruning to Preserve Attention Scores},
  author    = {Shim, Kyunghwan and Yun, Jaewoong and Choi, Shinkook},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2024},
  eprint    = {2404.11630},
  archivePrefix = {arXiv}
}"""

# (key in report["layers"][i]["before"/"after"], panel title)
_PANELS = (
    ("qk_head_dim", "Kept QK dim per head"),
    ("v_head_dim", "Kept V dim per head"),
    ("intermediate_size", "Kept MLP units"),
    ("num_heads", "Kept heads"),
)


# ---- plot --------------------------------------------------------------------------------------------------
def plot_pruning_profile(report: Mapping, path: str | os.PathLike) -> str:
    """Save a PNG at `path` with four panels (kept QK dim per head, kept V dim per head, kept MLP units, kept heads),
    one bar per layer, drawn against the original size as an outline. Returns `path` as a string."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    layers = report_layers(report)
    x = [row.get("layer", i) for i, row in enumerate(layers)]
    # The object API (no pyplot) keeps the process-wide backend and figure registry untouched.
    fig = Figure(figsize=(9, 6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    for ax, (key, title) in zip(axes.flat, _PANELS, strict=True):
        before = [row["before"][key] for row in layers]
        after = [row["after"][key] for row in layers]
        ax.bar(x, after, width=0.7, color="tab:blue", label="kept")
        ax.bar(x, before, width=0.7, fill=False, edgecolor="black", linewidth=1.0, label="original")
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.set_xticks(x)
        ax.set_ylim(0, max([*before, *after, 1]) * 1.12)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2)
    title = "SNP pruning profile"
    params, macs = report.get("params") or {}, report.get("macs") or {}
    if isinstance(params.get("ratio"), Real) and isinstance(macs.get("ratio"), Real):
        title += f": {params['ratio']:.0%} of the parameters, {macs['ratio']:.0%} of the MACs kept"
    fig.suptitle(title)
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path


# ---- results -----------------------------------------------------------------------------------------------
def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _clean_results(results: Mapping | None) -> dict:
    """`results` checked and reduced to plain floats/ints/strings, so it round-trips through the card's YAML."""
    if results is None:
        return {}
    if not isinstance(results, Mapping):
        raise ValueError(
            f"results must be a dict like {{'pruned': {{'top1': 0.95, 'top5': 1.0}}, 'dataset': {{'name': "
            f"'digits', 'type': 'sklearn-digits', 'split': 'test'}}}}, got {type(results).__name__}."
        )
    clean = {}
    for stage, value in results.items():
        if stage == DATASET_KEY:
            if not isinstance(value, Mapping) or not value.get("name"):
                raise ValueError(
                    f"results['dataset'] must be a dict with at least a 'name' (and 'type', 'split'), got {value!r}."
                )
            clean[DATASET_KEY] = {k: str(value[k]) for k in ("name", "type", "config", "split") if value.get(k)}
            continue
        if value is None:
            continue
        if not isinstance(value, Mapping) or not _is_number(value.get("top1")):
            raise ValueError(
                f"results[{stage!r}] must be a dict with a numeric 'top1' (optionally 'top5' and 'num_samples'), "
                f"e.g. the output of evaluate_accuracy; got {value!r}."
            )
        entry = {"top1": float(value["top1"])}
        if _is_number(value.get("top5")):
            entry["top5"] = float(value["top5"])
        if _is_number(value.get("num_samples")):
            entry["num_samples"] = int(value["num_samples"])
        clean[str(stage)] = entry
    return clean


def _merge_results(old: dict, new: dict) -> dict:
    """`old` updated with `new`; old stages measured on another dataset than the new one are dropped."""
    old_dataset, new_dataset = old.get(DATASET_KEY), new.get(DATASET_KEY)
    if old_dataset and new_dataset and old_dataset != new_dataset:
        stale = sorted(k for k in old if k != DATASET_KEY and k not in new)
        if stale:
            warnings.warn(
                f"The model card's results {stale} were measured on {old_dataset}, not on {new_dataset}; dropping "
                "them from the card. Pass them again with the new dataset to keep them.",
                UserWarning,
                stacklevel=3,
            )
        old = {}
    merged = {**old, **new}
    ordered = {stage: merged[stage] for stage in _stages(merged)}
    if DATASET_KEY in merged:
        ordered[DATASET_KEY] = merged[DATASET_KEY]
    return ordered


def _stages(results: dict) -> list[str]:
    known = [stage for stage in STAGES if stage in results]
    return known + [stage for stage in results if stage not in STAGES and stage != DATASET_KEY]


def _stage_label(stage: str) -> str:
    return STAGES.get(stage, stage)


def _eval_results(results: dict, task: str = "image-classification") -> list[EvalResult]:
    stages = _stages(results)
    if not stages:
        return []
    dataset = results.get(DATASET_KEY)
    if not dataset:
        raise ValueError(
            "results has accuracies but no 'dataset' entry saying where they were measured; add e.g. "
            "results['dataset'] = {'name': 'digits', 'type': 'sklearn-digits', 'split': 'test'}."
        )
    common = dict(
        task_type=task,
        task_name=task.replace("-", " ").title(),
        dataset_type=dataset.get("type", dataset["name"]),
        dataset_name=dataset["name"],
        dataset_config=dataset.get("config"),
        dataset_split=dataset.get("split"),
    )
    evals = []
    for stage in stages:
        label = _stage_label(stage)
        label = label[:1].lower() + label[1:]  # "after SNP pruning"
        evals.append(
            EvalResult(
                metric_type="accuracy",
                metric_name=f"Top-1 accuracy ({label})",
                metric_value=results[stage]["top1"],
                **common,
            )
        )
        if "top5" in results[stage]:
            evals.append(
                EvalResult(
                    metric_type="top_5_accuracy",
                    metric_name=f"Top-5 accuracy ({label})",
                    metric_value=results[stage]["top5"],
                    **common,
                )
            )
    return evals


# ---- card --------------------------------------------------------------------------------------------------
def _architecture_tag(architecture: str | None) -> str | None:
    """'SNPDeiTForImageClassification' -> 'snp_deit' (the model_type of the pruned family)."""
    if not architecture:
        return None
    match = re.match(r"SNP([A-Za-z0-9]+?)(?:For[A-Z]\w*|Model)$", architecture)
    return f"snp_{match.group(1).lower()}" if match else architecture.lower()


def _hub_model_id(name) -> str | None:
    """`name` if it can be a Hub model id ('org/name' or 'name') and is no local path, else None: the card's
    `base_model` must name a Hub model."""
    if isinstance(name, str) and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) and not os.path.exists(name):
        return name
    return None


def _previous_card(card_path: str) -> tuple[dict, dict]:
    """(results, metadata) stored by an earlier `write_model_card` in `card_path`; empty when there is none."""
    if not os.path.isfile(card_path):
        return {}, {}
    try:
        metadata = ModelCard.load(card_path).data.to_dict()
        return _clean_results(metadata.get(RESULTS_KEY) or {}), metadata
    except Exception as err:  # a hand-edited card we cannot parse: say so, then write a fresh one
        warnings.warn(
            f"Could not read the results of the existing model card {card_path} ({type(err).__name__}: {err}); "
            "writing a new card without them.",
            UserWarning,
            stacklevel=3,
        )
        return {}, {}


def _human(count) -> str:
    if not _is_number(count):
        return "?"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(count) >= scale:
            return f"{count / scale:.2f}{suffix}"
    return str(count)


def _size_table(report: Mapping) -> str:
    rows = ["| | Original | Pruned | Pruned / original |", "|---|---:|---:|---:|"]
    for key, name in (("params", "Parameters"), ("macs", "MACs")):
        entry = report.get(key) or {}
        ratio = entry.get("ratio")
        ratio_text = f"{ratio:.3f}" if _is_number(ratio) else "?"
        rows.append(f"| {name} | {_human(entry.get('before'))} | {_human(entry.get('after'))} | {ratio_text} |")
    hidden = report.get("hidden_size") or {}
    if hidden:
        rows.append(f"| Hidden size | {hidden.get('before', '?')} | {hidden.get('after', '?')} | |")
    return "\n".join(rows)


def _accuracy_section(results: dict) -> str:
    stages = _stages(results)
    if not stages:
        return "Not measured yet: pass `results=` (e.g. from `optimum_snp.evaluation.evaluate_accuracy`)."
    dataset = results[DATASET_KEY]
    where = f"**{dataset['name']}**"
    details = [
        f"`{dataset['type']}`" if dataset.get("type") else "",
        f"split `{dataset['split']}`" if "split" in dataset else "",
    ]
    details = [d for d in details if d]
    if details:
        where += f" ({', '.join(details)})"
    rows = [f"Measured on {where}.", "", "| Model | Top-1 | Top-5 | Images |", "|---|---:|---:|---:|"]
    for stage in stages:
        entry = results[stage]
        top5 = f"{entry['top5']:.2%}" if "top5" in entry else "n/a"
        rows.append(f"| {_stage_label(stage)} | {entry['top1']:.2%} | {top5} | {entry.get('num_samples', '')} |")
    return "\n".join(rows)


def _layers_table(report: Mapping) -> str:
    rows = ["| Layer | Heads | QK dim / head | V dim / head | MLP units |", "|---:|---:|---:|---:|---:|"]
    for i, row in enumerate(report["layers"]):
        cells = [f"{row['after'][key]} / {row['before'][key]}" for key in ("num_heads", "qk_head_dim", "v_head_dim")]
        cells.append(f"{row['after']['intermediate_size']} / {row['before']['intermediate_size']}")
        rows.append(f"| {row.get('layer', i)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _usage(architecture: str, name: str) -> tuple[str, str]:
    """(code with optimum-snp installed, code without it) that loads the model `name`."""
    adapter_cls = adapter_class_for_architecture(architecture)
    if adapter_cls is None:
        auto = "AutoModel"
        with_package = f'import optimum_snp  # noqa: F401\nfrom transformers import {auto}\n\nmodel = {auto}.from_pretrained("{name}")'
    else:
        auto = adapter_cls.auto_class_name(architecture)
        with_package = adapter_cls.card_snippet(architecture, name)
    without = f'from transformers import {auto}\n\nmodel = {auto}.from_pretrained("{name}", trust_remote_code=True)'
    return with_package, without


def _body(name: str, report: Mapping, config: dict, results: dict, base_model: str | None) -> str:
    source = base_model or report.get("source")
    if _hub_model_id(source):
        origin = f"from [`{source}`](https://huggingface.co/{source}) "
    else:
        origin = f"from `{source}` " if source else ""
    architecture = report.get("architecture") or "AutoModelForImageClassification"
    usage = _usage(architecture, name)
    return f"""
# {name}

This model was pruned {origin}with [SNP]({PAPER_URL}) (Structured Neuron-level Pruning to Preserve
Attention Scores, ECCV 2024) using optimum-snp {report.get("optimum_snp_version", __version__)}. SNP removes
query/key dimensions in pairs chosen to preserve the attention scores, value dimensions, whole heads and MLP units;
the result is a smaller dense `{architecture}` that runs with stock PyTorch and transformers.

## Size

{_size_table(report)}

## Accuracy

{_accuracy_section(results)}

## Pruning profile

![pruning profile]({PLOT_NAME})

Kept / original dimensions per layer:

{_layers_table(report)}

## SNP configuration

```json
{json.dumps(config, indent=2, sort_keys=False, default=str)}
```

## How to use

With optimum-snp installed, importing it registers the pruned architectures with the transformers Auto classes:

```python
{usage[0]}
```

Without optimum-snp, the modeling code shipped with the checkpoint is used:

```python
{usage[1]}
```

## Citation

Shim, Yun, Choi, "SNP: Structured Neuron-level Pruning to Preserve Attention Scores", ECCV 2024,
[arXiv:2404.11630]({PAPER_URL}).

```bibtex
{CITATION}
```
"""


def write_model_card(
    save_dir: str | os.PathLike,
    report: Mapping,
    snp_config: Mapping,
    results: Mapping | None = None,
    base_model: str | None = None,
    name: str | None = None,
) -> str:
    """Write (or update) `save_dir/README.md` and `save_dir/pruning_profile.png`; returns the card's path.

    `name`: the model's name in the card (its title and `model-index`), e.g. the repo id or the final folder name;
    default: the folder's name.

    `report`: `SNPPruner.report`. `snp_config`: `SNPConfig.to_dict()` (an `SNPConfig` works too). `results`:
    accuracies by stage plus the dataset, e.g. {"original": {"top1": 0.97, "top5": 1.0}, "pruned": {...},
    "fine-tuned": {...}, "dataset": {"name": "digits", "type": "sklearn-digits", "split": "test"}}; each stage
    may be the output of `evaluate_accuracy`. Results and `base_model` (a Hub model id) from an existing card are kept
    unless given again, and its extra tags are kept; stages measured on another dataset than a new one are dropped.
    """
    save_dir = os.fspath(save_dir)
    os.makedirs(save_dir, exist_ok=True)
    card_path = os.path.join(save_dir, CARD_NAME)
    if not isinstance(report, Mapping):
        raise ValueError(f"report must be the pruning report dict (SNPPruner.report), got {type(report).__name__}.")
    config = snp_config.to_dict() if hasattr(snp_config, "to_dict") else snp_config
    if not isinstance(config, Mapping):
        raise ValueError(f"snp_config must be SNPConfig.to_dict() (or an SNPConfig), got {type(snp_config).__name__}.")

    old_results, old_metadata = _previous_card(card_path)
    merged = _merge_results(old_results, _clean_results(results))
    architecture = report.get("architecture") or ""
    adapter_cls = adapter_class_for_architecture(architecture)
    if adapter_cls is not None:
        pipeline_tag = adapter_cls.pipeline_tag(architecture)
    else:
        pipeline_tag = "image-feature-extraction" if architecture.endswith("Model") else "image-classification"
    eval_results = _eval_results(merged, pipeline_tag)  # validates before anything is written
    base_model = base_model or old_metadata.get("base_model") or _hub_model_id(report.get("source"))
    name = name or os.path.basename(os.path.abspath(save_dir))

    plot_pruning_profile(report, os.path.join(save_dir, PLOT_NAME))
    tags = [*BASE_TAGS, _architecture_tag(report.get("architecture"))]
    tags += old_metadata.get("tags") or []
    metadata = ModelCardData(
        base_model=_hub_model_id(base_model),
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=list(dict.fromkeys(tag for tag in tags if tag)),
        model_name=name if eval_results else None,
        eval_results=eval_results or None,
        **({RESULTS_KEY: merged} if merged else {}),
    )
    body = _body(name, report, dict(config), merged, base_model)
    card = ModelCard(f"---\n{metadata.to_yaml()}\n---\n{body}")
    card.save(card_path)
    return card_path


__all__ = ["CARD_NAME", "PLOT_NAME", "RESULTS_KEY", "plot_pruning_profile", "write_model_card"]
