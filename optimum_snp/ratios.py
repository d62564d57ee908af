"""How much to prune: per-layer ratios (fraction REMOVED) and the authors' published ratio tables.

The four tables of the paper ship with the package (`optimum_snp/data/snp_ratios/*.json`) and load by name:
`"DeiT_t"`, `"DeiT_s"`, `"DeiT_s_small"`, `"DeiT_b"`. Their keys: `matmul` / `matmul_{2l}` = query/key
dims per head removed in layer l, `matmul_{2l+1}` = value dims per head removed in layer l,
`blocks_{l}_mlp_fc1` = MLP units removed in layer l, `add_{k}` = hidden channels removed (model-wide).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass
from importlib import resources

from .layer_dims import LayerDims


RATIO_TABLE_DIR = "data/snp_ratios"
_MATMUL = re.compile(r"^matmul(?:_(\d+))?$")
_MLP = re.compile(r"^blocks_(\d+)_mlp_fc1$")
_HIDDEN = re.compile(r"^add(?:_\d+)?$")


def removed_count(ratio: float, dim: int) -> int:
    """`round(ratio * dim)`, halves rounded up, robust to float noise in the tables."""
    return int(math.floor(ratio * dim + 0.5 + 1e-9))


def _check_ratio(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{what} must be a fraction to remove in [0, 1), got {value!r}.")
    return float(value)


@dataclass
class PruningRatios:
    """Fraction of every group REMOVED, one value per layer (hidden: one value for the whole model)."""

    qk: list[float]
    v: list[float]
    mlp: list[float]
    heads: list[float]
    hidden: float = 0.0

    @classmethod
    def uniform(
        cls, num_layers: int, qk: float = 0.0, v: float = 0.0, mlp: float = 0.0, heads: float = 0.0, hidden=0.0
    ) -> PruningRatios:
        return cls([qk] * num_layers, [v] * num_layers, [mlp] * num_layers, [heads] * num_layers, hidden)

    @property
    def num_layers(self) -> int:
        return len(self.qk)

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self, num_layers: int | None = None) -> None:
        lengths = {name: len(getattr(self, name)) for name in ("qk", "v", "mlp", "heads")}
        expected = num_layers if num_layers is not None else lengths["qk"]
        for name, n in lengths.items():
            if n != expected:
                raise ValueError(
                    f"The {name} ratios have {n} entries but the model has {expected} layers; give one per layer."
                )
            for idx, value in enumerate(getattr(self, name)):
                _check_ratio(value, f"The {name} ratio of layer {idx}")
        _check_ratio(self.hidden, "The hidden ratio")

    def kept_dims(self, hidden_size: int, layer_dims: list[LayerDims]) -> tuple[int, list[LayerDims]]:
        """Kept hidden size and per-layer dims; ValueError if a ratio would remove every filter of a group."""
        self.validate(len(layer_dims))

        def kept(ratio: float, dim: int, what: str) -> int:
            if dim == 0:  # a group the layer does not have (e.g. attention in a pooling block)
                return 0
            n = dim - removed_count(ratio, dim)
            if n < 1:
                raise ValueError(
                    f"Ratio {ratio} would remove all {dim} {what}; lower it below {1 - 0.5 / dim:.4f} to keep one."
                )
            return n

        hidden = kept(self.hidden, hidden_size, "hidden channels")
        dims = [
            LayerDims(
                kept(self.heads[i], d.num_heads, f"heads of layer {i}"),
                kept(self.qk[i], d.qk_head_dim, f"query/key filters per head of layer {i}"),
                kept(self.v[i], d.v_head_dim, f"value filters per head of layer {i}"),
                kept(self.mlp[i], d.intermediate_size, f"MLP units of layer {i}"),
            )
            for i, d in enumerate(layer_dims)
        ]
        return hidden, dims


def available_ratio_tables() -> list[str]:
    """Names of the ratio tables shipped with the package."""
    folder = resources.files("optimum_snp").joinpath(RATIO_TABLE_DIR)
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def _read_table(table: str | os.PathLike | dict) -> tuple[dict, str]:
    if isinstance(table, dict):
        return dict(table), "the given dict"
    name = os.fspath(table)
    if name in available_ratio_tables():
        path = resources.files("optimum_snp").joinpath(RATIO_TABLE_DIR, name + ".json")
        return json.loads(path.read_text()), f"table {name!r}"
    if os.path.isfile(name):
        with open(name) as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError(f"Ratio table {name} must hold a JSON object, got {type(data).__name__}.")
        return data, name
    raise ValueError(
        f"Unknown ratio table {name!r}: give one of {available_ratio_tables()}, the path of a JSON file, or a dict."
    )


def load_ratio_table(table: str | os.PathLike | dict, num_layers: int | None = None) -> PruningRatios:
    """Reads an authors'-format ratio table (by name, path or dict) into `PruningRatios`.

    With `num_layers`, a table made for a different number of layers is an error.
    """
    data, origin = _read_table(table)
    qk, v, mlp, hidden, unknown = {}, {}, {}, None, []
    for key, value in data.items():
        if m := _MATMUL.match(key):
            k = int(m.group(1) or 0)
            (qk if k % 2 == 0 else v)[k // 2] = _check_ratio(value, f"{origin}: {key!r}")
        elif m := _MLP.match(key):
            mlp[int(m.group(1))] = _check_ratio(value, f"{origin}: {key!r}")
        elif _HIDDEN.match(key):
            hidden = _check_ratio(value, f"{origin}: {key!r}")
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"Ratio {origin} has unknown keys {unknown}; allowed: 'matmul', 'matmul_<k>' (even k: query/key of layer "
            "k/2, odd k: value of layer (k-1)/2), 'blocks_<l>_mlp_fc1', 'add_<k>' (hidden)."
        )
    layers = 1 + max([*qk, *v, *mlp], default=-1)
    for name, group in (("query/key ('matmul_<2l>')", qk), ("value ('matmul_<2l+1>')", v), ("MLP", mlp)):
        missing = [i for i in range(layers) if i not in group]
        if missing:
            raise ValueError(f"Ratio {origin} has no {name} ratio for layers {missing}.")
    if num_layers is not None and layers != num_layers:
        raise ValueError(
            f"Ratio {origin} is for {layers} layers but the model has {num_layers}; use a table made for this model."
        )
    return PruningRatios(
        qk=[qk[i] for i in range(layers)],
        v=[v[i] for i in range(layers)],
        mlp=[mlp[i] for i in range(layers)],
        heads=[0.0] * layers,
        hidden=hidden or 0.0,
    )
