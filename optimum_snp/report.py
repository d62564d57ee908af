"""The pruning report: what `SNPPruner.prune` measured, saved as `pruning_report.json` and shown in the model card.

One schema, written by `build_report` and read by `report_layers` (the card, the CLI and the plot use them):

    {"optimum_snp_version", "source", "architecture",
     "params": {"before", "after", "ratio"}, "macs": {"before", "after", "ratio"},
     "hidden_size": {"before", "after"},
     "layers": [{"layer": i, "before": LayerDims.to_dict(), "after": LayerDims.to_dict()}, ...],
     ...}  # plus what the step that built it adds: criteria, seconds, allocation, reconstruction, ...
"""

from __future__ import annotations

from collections.abc import Mapping

from .accounting import ModelSize
from .layer_dims import LayerDims
from .version import __version__


LAYER_KEYS = tuple(LayerDims.__dataclass_fields__)


def build_report(
    *,
    source: str | None,
    architecture: str,
    size_before: ModelSize,
    size_after: ModelSize,
    hidden_before: int,
    hidden_after: int,
    dims_before: list[LayerDims],
    dims_after: list[LayerDims],
    **extra,
) -> dict:
    """The pruning report of a model with `dims_after` made from one with `dims_before`; `extra` entries follow."""
    return {
        "optimum_snp_version": __version__,
        "source": source,
        "architecture": architecture,
        **{k: v for k, v in extra.items() if k in ("criteria", "num_calibration_samples")},
        "params": {
            "before": size_before.params,
            "after": size_after.params,
            "ratio": size_after.params / size_before.params,
        },
        "macs": {"before": size_before.macs, "after": size_after.macs, "ratio": size_after.macs / size_before.macs},
        **{k: v for k, v in extra.items() if k not in ("criteria", "num_calibration_samples")},
        "hidden_size": {"before": hidden_before, "after": hidden_after},
        "layers": [
            {"layer": i, "before": b.to_dict(), "after": a.to_dict()}
            for i, (b, a) in enumerate(zip(dims_before, dims_after, strict=True))
        ],
    }


def report_layers(report: Mapping) -> list[dict]:
    """The report's per-layer entries, checked (a clear error for a report that is not one)."""
    layers = report.get("layers") if isinstance(report, Mapping) else None
    if not layers:
        raise ValueError(
            "The pruning report has no 'layers' entry; pass SNPPruner.report (or the pruning_report.json of a "
            "saved model), which lists the dims of every layer before and after pruning."
        )
    for row in layers:
        if not all(
            isinstance(row.get(side), Mapping) and all(k in row[side] for k in LAYER_KEYS)
            for side in ("before", "after")
        ):
            raise ValueError(
                f"Pruning report layer entry {row!r} lacks 'before'/'after' dims; each needs the keys {list(LAYER_KEYS)}."
            )
    return list(layers)


__all__ = ["LAYER_KEYS", "build_report", "report_layers"]
