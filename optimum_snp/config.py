"""`SNPConfig`: how a model is pruned, a validated dataclass saved as `snp_config.json` next to the model."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields

from .ratios import PruningRatios, load_ratio_table
from .version import __version__


SNP_CONFIG_NAME = "snp_config.json"
GROUPS = ("qk", "v", "mlp", "hidden", "heads")
# criterion names per group; "snp" is the shipped default of each group (chosen by benchmarks/ablation.py)
CRITERIA = {
    "qk": (
        "snp",
        "validated",
        "validated_per_layer",
        "validated_before_refit",
        "attention",
        "attention_iterative",
        "attention_kl",
        "attention_kl_cls",
        "attention_output",
        "logits",
        "svd",
        "svd_centered",
        "qk_norm",
        "magnitude",
        "random",
    ),
    "v": ("snp", "contribution", "redundancy", "redundancy_only", "magnitude", "random"),
    "mlp": ("snp", "contribution", "magnitude", "random"),
    "hidden": ("snp", "contribution", "magnitude", "random"),
    "heads": ("snp", "contribution", "magnitude", "random"),
}
# what "snp" means for each group: the winner of benchmarks/ablation.py (README). Hidden channels and whole heads
# are not SNP's own criteria; there the weight magnitude measured better than the activation contribution.
SNP_DEFAULTS = {
    # attention_kl or magnitude, whichever keeps the logits closer on held-out images (for the whole model; chosen per
    # layer inside the least-squares refit, "validated_per_layer" needs one refit instead of two but lost 8.9 points
    # to it on the report model digits-deit-s1 at 30% MACs; "validated_before_refit" compares the sliced models and
    # refits one, tied in top-1 and lost in logit KL on the tune models: README "Recovery without retraining")
    "qk": "validated",
    "v": "contribution",
    "mlp": "contribution",
    "hidden": "magnitude",
    "heads": "magnitude",
}


# query/key criteria that choose between VALIDATED_SNP_QK (attention_kl) and weight magnitude on the calibration data
VALIDATED_QK = ("validated", "validated_per_layer", "validated_before_refit")
# the data-driven criterion those compare with weight magnitude (read when prune() runs: benchmarks set it to compare
# another candidate, e.g. "attention_kl_cls", under the same rules)
VALIDATED_SNP_QK = "attention_kl"
RECONSTRUCT_MODES = ("least_squares", "bias", "none")
ALLOCATIONS = ("validated", "scores", "uniform", "sensitivity")
VALIDATION_RULES = ("argmin", "paired")  # how allocation="validated" picks its candidate
# allocation='sensitivity': the fractions of its units each (layer, group) keeps, alone, to measure its loss curve
SENSITIVITY_LEVELS = (0.125, 0.25, 0.5, 0.75)
# the 'scores' exponents tried by allocation='validated', on SNP's and on weight-magnitude scores (uniform ratios are
# always a candidate too); with the refit, 0.25 and 1 were never the held-out choice on the tune models
ALLOCATION_EXPONENTS = (0.0, 0.5)


REFIT_TARGETS = ("output", "residual")
# ridge="cv": the ridges tried per projection, and the folds (of calibration batches) they are compared on
RIDGE_GRID = (1e-3, 1e-2, 0.03, 0.1, 0.3, 1.0, 3.0)
CV_FOLDS = 4


def check_reconstruct(mode: str, ridge: float | None) -> None:
    """Validates the reconstruction options (`SNPConfig.reconstruct` / `ridge`; `ridge=None`: the architecture's
    default)."""
    if mode not in RECONSTRUCT_MODES:
        raise ValueError(f"Unknown `reconstruct` mode {mode!r}; choose one of {list(RECONSTRUCT_MODES)}.")
    if ridge is None or ridge == "cv":
        return
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge >= 0:
        raise ValueError(
            f"`ridge` must be a number >= 0 (relative to the mean of diag(X^T X); 0 = plain least squares) or 'cv' "
            f"(chosen per projection by cross-validation over calibration batches), got {ridge!r}."
        )


def _check_fraction(value, name: str, allow_list: bool = True) -> None:
    is_list = isinstance(value, (list, tuple)) and allow_list
    for i, v in enumerate(value if is_list else [value]):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) < 1.0:
            where = f"{name}[{i}]" if is_list else name
            raise ValueError(
                f"`{where}` must be a fraction of units to REMOVE in [0, 1), got {v!r}"
                + (": a float for every layer, or a list with one value per layer." if allow_list else ".")
            )


@dataclass
class SNPConfig:
    """How to prune a ViT/DeiT with SNP.

    Ratios are the fraction of units REMOVED: a float (every layer) or a list with one value per layer.
    With `target_macs` or `target_macs_ratio`, the query/key, value and MLP ratios are allocated automatically
    (`allocation`: by default uniform and score-based candidates, each pruned and reconstructed, the one closest to
    the unpruned model on held-out calibration images kept); `head_ratio` and `hidden_ratio` still apply. After the
    cut, `reconstruct` refits the projections on the calibration images (least squares by default).
    """

    qk_ratio: float | list[float] = field(default=0.0, metadata={"help": "Query/key dims per head removed."})
    v_ratio: float | list[float] = field(default=0.0, metadata={"help": "Value dims per head removed."})
    mlp_ratio: float | list[float] = field(default=0.0, metadata={"help": "MLP units removed."})
    hidden_ratio: float = field(default=0.0, metadata={"help": "Hidden (residual) channels removed, model-wide."})
    head_ratio: float | list[float] = field(default=0.0, metadata={"help": "Whole heads removed."})
    target_macs: float | None = field(default=None, metadata={"help": "Absolute MACs per image to reach."})
    target_macs_ratio: float | None = field(
        default=None, metadata={"help": "Fraction of the original MACs to KEEP, in (0, 1]."}
    )
    target_latency: float | None = field(
        default=None,
        metadata={
            "help": "Latency target, measured on the device the model is on (ViT/DeiT): a value in (0, 1] is the "
            "fraction of the unpruned model's measured latency to KEEP, a value > 1 is milliseconds per batch of "
            "`latency_batch_size`. The dims are allocated with a measured latency model (latency_model.py) instead "
            "of MACs, the pruned model is measured, and the allocation is redone (3 rounds at most) while it misses "
            "the target by more than 2.5%; the returned model is measured too, and re-allocated (2 rounds at most) "
            "where the held-out choice returned other dims that miss it. Exclusive with `target_macs`/"
            "`target_macs_ratio`."
        },
    )
    latency_batch_size: int = field(default=1, metadata={"help": "Batch size `target_latency` is measured at."})
    criterion: str | dict = field(
        default="snp", metadata={"help": "'snp', 'magnitude', 'random', or a dict group -> criterion name."}
    )
    qk_rank: int = field(default=4, metadata={"help": "Singular triplets used by the 'svd' query/key criteria."})
    round_to: int | None = field(
        default=None,
        metadata={
            "help": "Kept query/key and value dims per head, MLP units and hidden channels are multiples of this "
            "(Torch-Pruning's round_to). None (default): multiples of 8 for groups of at least 64 units, what this "
            "CPU runs fastest (README, Latency); 1 reproduces ratio tables exactly."
        },
    )
    allocation: str = field(
        default="validated",
        metadata={
            "help": "How a MACs target is split over layers and groups: 'uniform' (one ratio everywhere), 'scores' "
            "(greedy on normalized scores per MAC^macs_exponent) or 'validated' (uniform, and 'scores' on SNP's and "
            f"on weight-magnitude scores at exponents {ALLOCATION_EXPONENTS}, each pruned and reconstructed; the one "
            "with the lowest output divergence on calibration images held out from scoring is kept) or 'sensitivity' "
            "(each layer's query/key, value and MLP group cut alone to 1/8..3/4, refit, and measured on the held-out "
            "images; the greedy removes what adds the least divergence per MAC saved)."
        },
    )
    macs_exponent: float = field(
        default=0.25, metadata={"help": "Cost exponent of allocation='scores' (score / MACs_saved ** exponent)."}
    )
    num_validation_samples: int | None = field(
        default=None,
        metadata={
            "help": "Calibration samples held out from scoring to choose among allocations ('validated') and query/key "
            "criteria. None: the architecture's default (64 images for ViT/DeiT, timm and EfficientFormer, 32 texts "
            "for BERT-family encoders)."
        },
    )
    validation_rule: str = field(
        default="argmin",
        metadata={
            "help": "How allocation='validated' picks among its candidates: 'argmin' (the lowest mean held-out "
            "divergence) or 'paired' (uniform ratios unless the argmin candidate is lower than uniform's per held-out "
            "row in a one-sided paired t-test at the 5% level)."
        },
    )
    sensitivity_candidate: bool | None = field(
        default=None,
        metadata={
            "help": "Whether allocation='validated' also tries allocation='sensitivity' (measured per-(layer, group) "
            "loss curves: 12 cuts per layer, each refit and measured on the held-out samples; minutes for a base-size "
            "model on a CPU). None: the architecture's default (True for ViT/DeiT and text encoders, where it won on "
            "the tune models; False for EfficientFormer, not measured)."
        },
    )
    sensitivity_samples: int | None = field(
        default=32,
        metadata={
            "help": "Held-out samples each cut of the sensitivity allocation is measured on (the first ones); None: "
            "all of them. The cuts' passes are most of the sensitivity allocation's time. 32 (of the 64 held-out "
            "images) tied all of them on the image tune models (README, Sensitivity allocation); text encoders hold "
            "out 32 sentences, so they use all."
        },
    )
    max_allocated_ratio: float = field(
        default=0.9, metadata={"help": "Automatic allocation removes at most this fraction of any layer's group."}
    )
    block_pruning: bool = field(
        default=False,
        metadata={
            "help": "Block pruning under a MACs target: the allocation may also remove a layer's whole attention or "
            "MLP block (its residual branch disappears); with allocation='validated' the allocations with and without "
            "removed blocks are compared on the held-out images. ViT/DeiT."
        },
    )
    remove_attention: list[int] = field(
        default_factory=list, metadata={"help": "Layers whose attention block is removed whole (block pruning)."}
    )
    remove_mlp: list[int] = field(
        default_factory=list, metadata={"help": "Layers whose MLP block is removed whole (block pruning)."}
    )
    reconstruct: str = field(
        default="least_squares",
        metadata={
            "help": "Refit after the cut on the calibration images (reconstruction.py): 'least_squares' (o_proj and "
            "fc2 of every layer, sequentially), 'bias' (removed units' mean folded into the bias) or 'none'."
        },
    )
    ridge: float | str | None = field(
        default=None,
        metadata={
            "help": "Ridge of the least-squares refit towards the sliced weights, relative to the mean of diag(X^T X); "
            ">= 0, or 'cv': chosen per projection among RIDGE_GRID by 4-fold cross-validation over the calibration "
            "batches. None: the architecture's default (measured: 1e-3 for ViT/DeiT; 'cv' for text encoders, 0.3 when "
            "the calibration data is a single batch)."
        },
    )
    refit_target: str | None = field(
        default=None,
        metadata={
            "help": "What the least-squares refit matches: 'output' (each projection's output in the unpruned model) "
            "or 'residual' (the projection's output plus the residual it is added to, so the refit also absorbs the "
            "drift of earlier layers). None: the architecture's default."
        },
    )
    num_calibration_samples: int | None = field(
        default=None,
        metadata={"help": "Calibration images or texts; None: the architecture's default (64 images, 1024 texts)."},
    )
    batch_size: int = field(default=16, metadata={"help": "Calibration batch size."})
    seed: int = field(default=0, metadata={"help": "Seed of sampling and of the 'random' criterion."})
    image_column: str | None = field(default=None, metadata={"help": "Image column of the calibration dataset."})
    text_column: str | None = field(
        default=None, metadata={"help": "Text column of a text calibration dataset (default: text, sentence, ...)."}
    )
    text_pair_column: str | None = field(
        default=None, metadata={"help": "Second text column, for models that read text pairs (e.g. NLI, QA)."}
    )
    max_length: int = field(default=128, metadata={"help": "Tokens per calibration text at most (truncation)."})
    ratio_table: str | None = field(default=None, metadata={"help": "Name/path of the ratio table used, if any."})

    def __post_init__(self):
        for name in ("qk_ratio", "v_ratio", "mlp_ratio", "head_ratio"):
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = list(value)
                setattr(self, name, value)
            _check_fraction(value, name)
        if isinstance(self.hidden_ratio, (list, tuple)):
            raise ValueError("`hidden_ratio` is model-wide (the residual stream): give one float, not a list.")
        _check_fraction(self.hidden_ratio, "hidden_ratio", allow_list=False)
        if self.target_macs is not None and self.target_macs_ratio is not None:
            raise ValueError("Set either `target_macs` (absolute) or `target_macs_ratio` (fraction kept), not both.")
        if self.target_macs is not None and not self.target_macs > 0:
            raise ValueError(f"`target_macs` must be > 0, got {self.target_macs!r}.")
        if self.target_macs_ratio is not None and not 0.0 < self.target_macs_ratio <= 1.0:
            raise ValueError(
                f"`target_macs_ratio` is the fraction of MACs to KEEP, in (0, 1]; got {self.target_macs_ratio!r}."
            )
        if self.target_latency is not None:
            if self.target_macs is not None or self.target_macs_ratio is not None:
                raise ValueError(
                    "Set either a latency target (`target_latency`) or a MACs target (`target_macs`/"
                    "`target_macs_ratio`), not both."
                )
            value = self.target_latency
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(
                    "`target_latency` must be a number > 0: a fraction in (0, 1] of the unpruned model's measured "
                    f"latency to keep, or a value > 1 in milliseconds; got {value!r}."
                )
        if (
            isinstance(self.latency_batch_size, bool)
            or not isinstance(self.latency_batch_size, int)
            or self.latency_batch_size < 1
        ):
            raise ValueError(f"`latency_batch_size` must be an int >= 1, got {self.latency_batch_size!r}.")
        if self.has_target and any(self._nonzero(getattr(self, n)) for n in ("qk_ratio", "v_ratio", "mlp_ratio")):
            raise ValueError(
                "With `target_macs`/`target_macs_ratio`/`target_latency` the qk/v/mlp ratios are allocated automatically; leave "
                "`qk_ratio`, `v_ratio` and `mlp_ratio` at 0 (head_ratio and hidden_ratio may be set)."
            )
        if self.criterion_per_group()["qk"] == "validated_per_layer" and self.reconstruct != "least_squares":
            raise ValueError(
                "criterion={'qk': 'validated_per_layer'} chooses each layer's query/key criterion by the least-squares "
                f"refit's error; it needs reconstruct='least_squares' (got {self.reconstruct!r}). Use "
                "{'qk': 'validated'} (chosen on held-out images) with other reconstruction modes."
            )
        if not isinstance(self.qk_rank, int) or self.qk_rank < 1:
            raise ValueError(f"`qk_rank` must be an int >= 1, got {self.qk_rank!r}.")
        if self.round_to is not None and (
            isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1
        ):
            raise ValueError(
                f"`round_to` must be None (automatic) or an int >= 1 (1: no rounding), got {self.round_to!r}."
            )
        if not 0.0 < self.max_allocated_ratio < 1.0:
            raise ValueError(f"`max_allocated_ratio` must be in (0, 1), got {self.max_allocated_ratio!r}.")
        check_reconstruct(self.reconstruct, self.ridge)
        if self.refit_target is not None and self.refit_target not in REFIT_TARGETS:
            raise ValueError(
                f"Unknown `refit_target` {self.refit_target!r}; choose one of {list(REFIT_TARGETS)} or None (the "
                "architecture's default)."
            )
        if not isinstance(self.block_pruning, bool):
            raise ValueError(f"`block_pruning` must be True or False, got {self.block_pruning!r}.")
        for name in ("remove_attention", "remove_mlp"):
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = list(value)
                setattr(self, name, value)
            if not isinstance(value, list) or any(
                isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in value
            ):
                raise ValueError(f"`{name}` must be a list of layer indices (ints >= 0), got {value!r}.")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"Unknown `allocation` {self.allocation!r}; choose one of {list(ALLOCATIONS)}.")
        if self.validation_rule not in VALIDATION_RULES:
            raise ValueError(
                f"Unknown `validation_rule` {self.validation_rule!r}; choose one of {list(VALIDATION_RULES)}."
            )
        if self.sensitivity_candidate is not None and not isinstance(self.sensitivity_candidate, bool):
            raise ValueError(
                f"`sensitivity_candidate` must be True, False or None (the architecture's default), got "
                f"{self.sensitivity_candidate!r}."
            )
        if isinstance(self.macs_exponent, bool) or not isinstance(self.macs_exponent, (int, float)):
            raise ValueError(f"`macs_exponent` must be a number (e.g. 0.25), got {self.macs_exponent!r}.")
        for name in (
            "num_calibration_samples",
            "batch_size",
            "num_validation_samples",
            "max_length",
            "sensitivity_samples",
        ):
            if (
                name in ("num_calibration_samples", "num_validation_samples", "sensitivity_samples")
                and getattr(self, name) is None
            ):
                continue
            minimum = 0 if name == "num_validation_samples" else 1
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"`{name}` must be an int >= {minimum}, got {getattr(self, name)!r}.")

    @staticmethod
    def _nonzero(value) -> bool:
        return any(v != 0 for v in value) if isinstance(value, list) else value != 0

    @property
    def has_target(self) -> bool:
        return self.target_macs is not None or self.target_macs_ratio is not None or self.target_latency is not None

    @property
    def needs_calibration(self) -> bool:
        if self.reconstruct != "none" or (self.has_target and self.allocation == "validated"):
            return True  # the refit and the validated allocation run on calibration images
        return any(c not in ("magnitude", "random") for c in self.criterion_per_group().values())

    def criterion_per_group(self, defaults: dict[str, str] | None = None) -> dict[str, str]:
        """The resolved criterion of every group (`"snp"` replaced by the shipped default of that group: `defaults`
        (an architecture's `default_criteria`) where they name it, else SNP_DEFAULTS)."""
        if isinstance(self.criterion, str):
            if self.criterion not in ("snp", "magnitude", "random"):
                raise ValueError(
                    f"Unknown criterion {self.criterion!r}: use 'snp', 'magnitude', 'random', or a dict mapping groups "
                    f"{list(GROUPS)} to criteria {CRITERIA}."
                )
            chosen = dict.fromkeys(GROUPS, self.criterion)
        elif isinstance(self.criterion, dict):
            unknown = sorted(set(self.criterion) - set(GROUPS))
            if unknown:
                raise ValueError(f"Unknown criterion group(s) {unknown}; groups are {list(GROUPS)}.")
            chosen = {**dict.fromkeys(GROUPS, "snp"), **self.criterion}
        else:
            raise ValueError(f"`criterion` must be a str or a dict, got {type(self.criterion).__name__}.")
        for group, name in chosen.items():
            if name not in CRITERIA[group]:
                raise ValueError(f"Unknown {group} criterion {name!r}; choose one of {list(CRITERIA[group])}.")
        shipped = {**SNP_DEFAULTS, **(defaults or {})}
        return {g: shipped[g] if n == "snp" else n for g, n in chosen.items()}

    def pruning_ratios(self, num_layers: int) -> PruningRatios:
        """Per-layer ratios for a model with `num_layers` layers (lists are checked against it)."""

        def per_layer(name):
            value = getattr(self, name)
            if isinstance(value, list):
                if len(value) != num_layers:
                    raise ValueError(
                        f"`{name}` has {len(value)} values but the model has {num_layers} layers; give one per layer "
                        "or a single float."
                    )
                return [float(v) for v in value]
            return [float(value)] * num_layers

        return PruningRatios(
            qk=per_layer("qk_ratio"),
            v=per_layer("v_ratio"),
            mlp=per_layer("mlp_ratio"),
            heads=per_layer("head_ratio"),
            hidden=float(self.hidden_ratio),
        )

    @classmethod
    def from_ratio_table(cls, table: str | os.PathLike | dict, **kwargs) -> SNPConfig:
        """A config with the per-layer ratios of an authors'-format table (name, path or dict)."""
        ratios = load_ratio_table(table)
        name = table if isinstance(table, str) else (os.fspath(table) if not isinstance(table, dict) else None)
        return cls(
            qk_ratio=ratios.qk,
            v_ratio=ratios.v,
            mlp_ratio=ratios.mlp,
            hidden_ratio=ratios.hidden,
            ratio_table=name,
            **kwargs,
        )

    # ---- serialization ----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {**asdict(self), "optimum_snp_version": __version__}

    @classmethod
    def from_dict(cls, data: dict) -> SNPConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"optimum_snp_version"})
        if unknown:
            raise ValueError(f"Unknown SNPConfig field(s) {unknown}; known fields: {sorted(known)}.")
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, SNP_CONFIG_NAME)
        with open(path, "w") as f:
            f.write(self.to_json_string())
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> SNPConfig:
        """Reads `snp_config.json` from a folder (or the file itself)."""
        path = os.fspath(path)
        file = os.path.join(path, SNP_CONFIG_NAME) if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise ValueError(f"No {SNP_CONFIG_NAME} found at {path}.")
        with open(file) as f:
            return cls.from_dict(json.load(f))
