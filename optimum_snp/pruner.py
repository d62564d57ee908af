"""`SNPPruner`: the thin entry point. `from_pretrained(model)`, then `prune(config, calibration_dataset, save_dir)`.

calibrate (calibration.py) -> score (scoring/) -> allocate (allocation.py) -> plan (plan.py) -> slice (slicing.py)
-> reconstruct (reconstruction.py) -> validate (validation.py: candidates compared on held-out samples) -> save
(model, image processor, snp_config.json, pruning plan and report; atomically).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from dataclasses import replace

import torch
from torch import nn

from . import config as _config
from .accounting import architecture_of, model_size_of
from .adapters import adapter_class_for, get_adapter, supported_model_classes
from .adapters.timm import (
    convert_timm_model,
    image_processor_from_timm,
    is_timm_model,
    is_timm_source,
    load_timm_source,
)
from .allocation import FIELDS, allocate_dims, round_dims, round_kept, sensitivity_curve, uniform_dims
from .artifacts import PLAN_NAME, REPORT_NAME, PruningInfo, attach_pruning_info, get_pruning_info, record_results
from .calibration import (
    CalibrationSizeWarning,
    batch_length,
    calibration_batches,
    split_batches,
    text_calibration_batches,
)
from .config import ALLOCATION_EXPONENTS, SENSITIVITY_LEVELS, VALIDATED_QK, SNPConfig
from .latency_model import LatencyModel, measure_latency
from .plan import PruningPlan, plan_from_kept_dims
from .ratios import PruningRatios
from .reconstruction import TargetCache, layer_inputs, next_layer_inputs, reconstruct, skipped_layers
from .report import build_report
from .scoring import magnitude_scores
from .scoring.snp import scores_to_cpu, snp_scores
from .slicing import apply_plan
from .utils import atomic_directory, check_output_dir
from .validation import CandidateSearch, HeldOut, OutputRecorder, divergence, model_outputs


logger = logging.getLogger(__name__)


def _warn_short_calibration(available: int, num_samples: int, num_held_out: int) -> None:
    """Warns, at the caller of `prune()`, that the calibration dataset holds fewer samples than it asked for."""
    if not num_held_out:
        what, then = f"num_calibration_samples={num_samples}", f"calibrating on all {available}"
    else:
        what = (
            f"num_calibration_samples={num_samples} plus num_validation_samples={num_held_out} held out to choose "
            "among candidates"
        )
        then = (
            f"calibrating on all {available}, with nothing left to hold out: candidates are compared on the "
            "calibration samples themselves"
            if available <= num_samples
            else f"calibrating on {num_samples} and holding out the other {available - num_samples}"
        )
    warnings.warn(
        f"The calibration dataset has only {available} examples, fewer than {what}; {then}. Pass more examples, or "
        "set these numbers lower to silence this.",
        CalibrationSizeWarning,
        stacklevel=4,  # _warn_short_calibration < _calibration_batches < prune < the caller
    )


class SNPPruner:
    """Prunes a supported transformers model (ViT/DeiT image models, BERT-family text encoders, or an already
    pruned SNP model) with SNP.

    Example:
        >>> pruner = SNPPruner.from_pretrained("facebook/deit-small-patch16-224")
        >>> pruned = pruner.prune(SNPConfig(target_macs_ratio=0.5), calibration_dataset="imagenet-1k", save_dir="out")
        >>> pruner = SNPPruner.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
        >>> pruned = pruner.prune(SNPConfig(target_macs_ratio=0.7), calibration_dataset="stsb_multi_mt", save_dir="o")

    A dataset given by name is streamed: only the calibration samples are downloaded.
    """

    def __init__(self, model: nn.Module, image_processor=None, source: str | None = None, tokenizer=None):
        if is_timm_model(model):  # a timm model or transformers' TimmWrapper: its exact transformers equivalent
            model, timm_processor = convert_timm_model(model, with_image_processor=image_processor is None)
            image_processor = image_processor or timm_processor
        self.adapter = get_adapter(model)  # fails early, listing the supported classes
        self.model = model
        self.source = source if source is not None else (getattr(model, "name_or_path", None) or None)
        preprocessor = tokenizer if self.adapter.modality == "text" else image_processor
        self.preprocessor = preprocessor or self.adapter.load_preprocessor(self.source)
        if type(self.preprocessor).__name__ == "TimmWrapperImageProcessor":  # cannot be saved: its transformers twin
            self.preprocessor = image_processor_from_timm(self.preprocessor)
        self.plan: PruningPlan | None = None
        self.report: dict | None = None
        self._latency: dict | None = None  # latency target state of the running prune() (target_latency)
        self._context: dict | None = None  # calibration data of the running prune() (allocation='sensitivity')
        self._sensitivity: dict | None = None  # the curves allocation='sensitivity' measured
        self._sensitivity_curves: tuple | None = (
            None  # ((kept hidden, base dims), their curves) of the running prune()
        )

    @property
    def image_processor(self):
        """The image processor of an image model (None for text models)."""
        return self.preprocessor if self.adapter.modality == "image" else None

    @property
    def tokenizer(self):
        """The tokenizer of a text model (None for image models)."""
        return self.preprocessor if self.adapter.modality == "text" else None

    @classmethod
    def from_pretrained(
        cls, model_or_path: nn.Module | str | os.PathLike, image_processor=None, tokenizer=None, **kwargs
    ) -> SNPPruner:
        """From a model instance, a local folder or a Hub id (loaded with the Auto class of the class its config
        names, e.g. `AutoModelForImageClassification`, `AutoModel` for a sentence-transformers folder; `kwargs` go to
        `from_pretrained`).

        timm ViT/DeiT models are converted exactly to transformers' ViT/DeiT classes: a timm instance, a TimmWrapper
        model, a `timm/<name>` (or `hf-hub:<repo>`) id or a local timm folder (`kwargs` then go to
        `timm.create_model`); the image processor reproduces timm's eval transform unless one is given."""
        if isinstance(model_or_path, nn.Module):
            return cls(model_or_path, image_processor=image_processor, tokenizer=tokenizer)
        source = os.fspath(model_or_path)
        if is_timm_source(source):
            model, timm_processor = load_timm_source(source, with_image_processor=image_processor is None, **kwargs)
            processor = image_processor or timm_processor
            return cls(model, image_processor=processor, source=model.name_or_path or source, tokenizer=tokenizer)
        model = load_model(source, **kwargs)
        return cls(model.eval(), image_processor=image_processor, source=source, tokenizer=tokenizer)

    # ---- the verb ---------------------------------------------------------------------------------------
    def prune(
        self,
        config: SNPConfig | None = None,
        calibration_dataset=None,
        save_dir: str | os.PathLike | None = None,
        overwrite: bool = False,
        split: str = "train",
        show_progress: bool = True,
    ) -> nn.Module:
        """Returns the pruned model (an SNP model class); with `save_dir`, also writes it there atomically."""
        config = config if config is not None else SNPConfig()
        if not isinstance(config, SNPConfig):
            raise ValueError(f"`config` must be an SNPConfig, got {type(config).__name__}.")
        if save_dir is not None:
            check_output_dir(save_dir, overwrite, source=self.source)
        _check_device(self.model)
        adapter = get_adapter(self.model)
        ratios = config.pruning_ratios(adapter.num_layers)
        if not adapter.supports_hidden_pruning and SNPConfig._nonzero(config.hidden_ratio):
            raise ValueError(
                f"{type(self.model).__name__} keeps its hidden channels (the width of its token and sentence "
                f"embeddings is part of its interface); set hidden_ratio=0 (got {config.hidden_ratio})."
            )
        criteria = config.criterion_per_group(adapter.default_criteria)
        start = time.perf_counter()
        self._latency = None
        self._sensitivity = None
        self._sensitivity_curves = None

        batches, held_out, num_samples = self._calibration_batches(
            config, criteria, calibration_dataset, split, show_progress
        )
        scores, qk_variants, cache, recorder = self._score(config, criteria, batches, held_out, show_progress)
        scored = time.perf_counter()
        # an empty held-out list: the dataset was too short to hold any out, and prune() has warned already
        validation = HeldOut(self.model, batches, held_out, recorder, num_samples, warned=held_out == [])
        # what allocation='sensitivity' measures its curves with
        self._context = dict(batches=batches, cache=cache, validation=validation, progress=show_progress)
        try:
            if config.target_latency is not None:  # allocate, build, measure; re-allocate while the target is missed
                self._calibrate_latency(config, ratios, scores)
            candidates = self._candidate_dims(config, ratios, scores)
        finally:
            self._context = None
        search = CandidateSearch(self.model, config, criteria, qk_variants, batches, cache, validation, show_progress)
        plan, pruned, chosen, reconstruction = search.run(candidates)
        measured = None
        if config.target_latency is not None:  # the chosen allocation measured, and re-allocated while it misses
            plan, pruned, chosen, reconstruction, measured = self._settle_latency(
                config, ratios, scores, search, (plan, pruned, chosen, reconstruction)
            )
        done = time.perf_counter()
        criteria = {**criteria, "qk": chosen["qk_criterion"]}

        self.plan = plan
        self.report = self._report(config, criteria, plan, pruned, batches, scored - start, done - start)
        self.report["seconds"]["reconstruction"] = round(search.reconstruction_s, 3)
        self.report["reconstruction"] = reconstruction
        self.report["allocation"] = {"chosen": chosen["allocation"], "candidates": search.tried}
        if search.sliced_tried:  # 'validated_before_refit': the query/key criteria compared on the sliced models
            self.report["allocation"]["qk_before_refit"] = search.sliced_tried
        if self._sensitivity is not None:  # per 'layer.group': kept units -> divergence, that group alone cut
            self.report["allocation"]["sensitivity"] = self._sensitivity
        if validation.reference is not None:
            self.report["allocation"]["num_validation_samples"] = validation.num_rows
        if config.target_latency is not None:
            self.report["latency"] = self._latency_report(config, plan, measured)
        # carried by the model, so that any later save_pretrained / push_to_hub writes them and the model card
        attach_pruning_info(
            pruned,
            PruningInfo(
                snp_config=config,
                report=self.report,
                plan=plan,
                image_processor=self.preprocessor,
                base_model=self.source,
                source=self.source,
            ),
        )
        if save_dir is not None:
            self.save(pruned, save_dir, config, overwrite=overwrite)
        return pruned

    def _calibration_batches(self, config: SNPConfig, criteria: dict, calibration_dataset, split, show_progress):
        """(calibration batches, held-out batches or None, number of calibration samples asked for): the held-out
        samples come on top of the calibration ones when prune() will compare candidates."""
        adapter = get_adapter(self.model)
        batches, held_out = None, None
        num_samples = config.num_calibration_samples or adapter.default_calibration_samples
        if config.needs_calibration:
            if calibration_dataset is None:
                data_free = all(c in ("magnitude", "random") for c in criteria.values())
                needs = [] if data_free else [f"Criteria {criteria}"]
                if config.reconstruct != "none":
                    needs.append(f"reconstruct={config.reconstruct!r}")
                if config.has_target and config.allocation in ("validated", "sensitivity"):
                    needs.append(f"allocation={config.allocation!r}")
                raise ValueError(
                    f"{' and '.join(needs)} need calibration images: pass `calibration_dataset` (a datasets.Dataset, "
                    "a dataset name or a folder of images), or use criterion='magnitude', reconstruct='none' and "
                    "(with a MACs target) allocation='scores' or 'uniform'."
                )
            num_held_out = (
                adapter.default_validation_samples
                if config.num_validation_samples is None
                else config.num_validation_samples
            )
            validate = num_held_out > 0 and _has_choices(config, criteria)
            common = dict(
                num_samples=num_samples + (num_held_out if validate else 0),
                batch_size=config.batch_size,
                seed=config.seed,
                split=split,
                show_progress=show_progress,
            )
            with warnings.catch_warnings():  # a short dataset is reported below, in prune()'s own terms
                warnings.simplefilter("ignore", CalibrationSizeWarning)
                if adapter.modality == "text":
                    batches = text_calibration_batches(
                        calibration_dataset,
                        self.tokenizer,
                        text_column=config.text_column,
                        text_pair_column=config.text_pair_column,
                        max_length=config.max_length,
                        **common,
                    )
                else:
                    batches = calibration_batches(
                        calibration_dataset, self.image_processor, image_column=config.image_column, **common
                    )
            available = sum(batch_length(b) for b in batches)
            if available < common["num_samples"]:
                _warn_short_calibration(available, num_samples, num_held_out if validate else 0)
            if validate:
                batches, held_out = split_batches(batches, num_samples)
        return batches, held_out, num_samples

    def _score(self, config: SNPConfig, criteria: dict, batches, held_out, show_progress: bool):
        """(scores, query/key scores per criterion to choose among, the refit's target cache, the recorder of the
        unpruned outputs): one pass of the unpruned model over the calibration batches records all of them."""
        validated_qk = criteria["qk"] in VALIDATED_QK
        snp_qk = _config.VALIDATED_SNP_QK  # what 'validated' compares with weight magnitude
        choices = [c for c in _config.CRITERIA["qk"] if c not in (*VALIDATED_QK, "snp", "magnitude", "random")]
        if validated_qk and snp_qk not in choices:
            raise ValueError(
                f"optimum_snp.config.VALIDATED_SNP_QK={snp_qk!r} is not a data-driven query/key criterion to compare "
                f"with weight magnitude; set it to one of {choices} (the shipped one is 'attention_kl')."
            )
        scoring_criteria = {**criteria, "qk": snp_qk} if validated_qk else criteria
        # the refit's targets (the unpruned model's projection outputs) are recorded during the scoring pass
        cache = (
            TargetCache(self.model, len(batches), config.refit_target)
            if config.reconstruct == "least_squares" and batches
            else None
        )
        # with no images left to hold out, candidates are compared on the calibration images: the unpruned model's
        # outputs on them are recorded during the scoring pass instead of running the model again
        recorder = (
            OutputRecorder(self.model, len(batches))
            if batches and not held_out and _has_choices(config, criteria)
            else None
        )
        with cache if cache is not None else contextlib.nullcontext(), recorder or contextlib.nullcontext():
            scores = snp_scores(
                self.model,
                batches,
                scoring_criteria,
                qk_rank=config.qk_rank,
                seed=config.seed,
                show_progress=show_progress,
            )
        # query/key scores to choose among ('validated': SNP's second-order attention criterion, or weight magnitude)
        qk_variants = {criteria["qk"]: scores}
        if validated_qk:
            magnitude = scores_to_cpu(magnitude_scores(self.model))
            qk_variants = {
                snp_qk: scores,
                "magnitude": replace(
                    scores,
                    layers=[replace(ls, qk=m.qk) for ls, m in zip(scores.layers, magnitude.layers, strict=True)],
                ),
            }
        return scores, qk_variants, cache, recorder

    def _candidate_dims(
        self, config: SNPConfig, ratios: PruningRatios, scores, unique: bool = True
    ) -> list[tuple[str, int, list]]:
        """(name, kept hidden channels, per-layer dims) of every allocation to try; one unless 'validated'. With
        `unique`, dims that two allocations share are listed once (under the first name)."""
        adapter = get_adapter(self.model)
        layer_dims = adapter.layer_dims()
        if not config.has_target:
            kept_hidden, dims = ratios.kept_dims(adapter.hidden_size, layer_dims)
            kept_hidden = round_kept(kept_hidden, adapter.hidden_size, config.round_to)
            dims = _remove_blocks(round_dims(dims, layer_dims, config.round_to), config, adapter)
            return [("ratios", kept_hidden, dims)]
        # heads and hidden channels from their ratios, the rest allocated to reach the target
        kept_hidden, base_dims = PruningRatios(
            qk=[0.0] * len(layer_dims),
            v=[0.0] * len(layer_dims),
            mlp=[0.0] * len(layer_dims),
            heads=ratios.heads,
            hidden=ratios.hidden,
        ).kept_dims(adapter.hidden_size, layer_dims)
        base_dims = _remove_blocks(base_dims, config, adapter)
        kept_hidden = round_kept(kept_hidden, adapter.hidden_size, config.round_to)
        latency_cost = {}
        if config.target_latency is not None:  # sizes in ms, from the measured latency model
            latency_model, target = self._latency_target(config, kept_hidden, base_dims)
            latency_cost = dict(layer_cost=latency_model.layer_cost, fixed_cost=latency_model.fixed_ms)
        else:
            original = model_size_of(self.model).macs
            target = config.target_macs if config.target_macs is not None else config.target_macs_ratio * original
        common = dict(
            config=self.model.config,
            architecture=architecture_of(self.model),
            kept_hidden=kept_hidden,
            base_dims=base_dims,
            target_macs=target,
            max_ratio=config.max_allocated_ratio,
            round_to=config.round_to,
            **latency_cost,
        )
        if config.allocation == "uniform":
            return [("uniform", kept_hidden, uniform_dims(**common))]
        if config.allocation == "sensitivity":
            return [
                ("sensitivity", kept_hidden, self._sensitivity_dims(config, scores, kept_hidden, base_dims, common))
            ]

        def within_groups(name: str, allocate) -> list:
            """[(name, hidden, dims)]; with block pruning allowed, [] when the target needs whole blocks removed
            (the candidates with blocks reach it), so that only they are tried."""
            try:
                return [(name, kept_hidden, allocate())]
            except ValueError:
                if not config.block_pruning:
                    raise
                return []

        exponents = [config.macs_exponent] if config.allocation == "scores" else list(ALLOCATION_EXPONENTS)
        candidates = []
        if not (config.block_pruning and config.allocation == "scores"):
            for e in exponents:
                candidates += within_groups(
                    f"scores^{e:g}", lambda e=e: allocate_dims(scores, macs_exponent=e, **common)
                )
        if config.block_pruning:  # the same greedy, whole blocks allowed (alone with allocation='scores')
            candidates += [
                (
                    f"scores^{e:g}+blocks",
                    kept_hidden,
                    allocate_dims(scores, macs_exponent=e, allow_block_removal=True, **common),
                )
                for e in exponents
            ]
        if config.allocation == "validated":
            # the same greedy on weight-magnitude scores: they put the cuts elsewhere, which the refit may absorb better
            magnitude = scores_to_cpu(magnitude_scores(self.model))
            for e in exponents:
                candidates += within_groups(
                    f"magnitude-scores^{e:g}", lambda e=e: allocate_dims(magnitude, macs_exponent=e, **common)
                )
            wanted = config.sensitivity_candidate
            if (adapter.sensitivity_candidate if wanted is None else wanted) and config.target_latency is None:
                # measured loss curves (allocation='sensitivity') as one more candidate, for the architectures where
                # they won on the tune data (or where the config asks for them)
                candidates += within_groups(
                    "sensitivity", lambda: self._sensitivity_dims(config, scores, kept_hidden, base_dims, common)
                )
            candidates = within_groups("uniform", lambda: uniform_dims(**common)) + candidates
            if unique:
                first = {}
                for name, hidden, dims in candidates:  # the same dims under two names are tried once
                    first.setdefault(tuple(dims), (name, hidden, dims))
                candidates = list(first.values())
        return candidates

    def _sensitivity_dims(self, config: SNPConfig, scores, kept_hidden: int, base_dims: list, common: dict) -> list:
        """allocation='sensitivity': each (layer, group) alone is cut to SENSITIVITY_LEVELS of its units, that layer
        refit (the configured reconstruction), and the output divergence measured on the held-out calibration
        samples; the greedy then removes, step by step, what adds the least interpolated divergence per MAC saved."""
        from tqdm.auto import tqdm

        # measured once per prune(): the latency rounds and their settling re-allocate from the same curves
        key = (kept_hidden, list(base_dims))
        if self._sensitivity_curves is not None and self._sensitivity_curves[0] == key:
            return allocate_dims(scores, loss_curves=self._sensitivity_curves[1], **common)
        context = self._context
        held_out, reference = context["validation"].get()
        count = config.sensitivity_samples
        if count is not None and count < context["validation"].num_rows:
            held_out, _ = split_batches(held_out, count)  # the first `count` held-out samples
            reference = model_outputs(self.model, held_out)
        jobs = [
            (idx, group, field, fraction)
            for idx, base in enumerate(base_dims)
            for group, field in FIELDS
            if getattr(base, field) > 1
            for fraction in SENSITIVITY_LEVELS
        ]
        least_squares = config.reconstruct == "least_squares"
        # every cut of layer idx shares layers 0..idx-1 with the model pruned to the base dims (nothing refit there):
        # their inputs of layer idx are computed once, one layer further for each idx, and each cut runs from there
        # (its refit from layer idx on the calibration batches, its held-out pass from layer idx on); bias
        # compensation works on the whole model and takes the full passes
        shared = config.reconstruct in ("least_squares", "none")
        if shared:
            base_model = apply_plan(self.model, plan_from_kept_dims(scores, kept_hidden, base_dims)).eval()
            calibration = layer_inputs(base_model, context["batches"]) if least_squares else None
            held_out_inputs = layer_inputs(base_model, held_out)
        like, current = None, 0
        points: dict[tuple[int, str], dict[int, float]] = {}
        for idx, group, field, fraction in tqdm(
            jobs, desc="SNP sensitivity", unit="cut", disable=not context["progress"]
        ):
            while shared and current < idx:
                if calibration is not None:
                    calibration, _ = next_layer_inputs(base_model, current, calibration)
                held_out_inputs, like = next_layer_inputs(base_model, current, held_out_inputs)
                current += 1
            full = getattr(base_dims[idx], field)
            kept = max(1, round(fraction * full))
            dims = list(base_dims)
            dims[idx] = replace(dims[idx], **{field: kept})
            plan = plan_from_kept_dims(scores, kept_hidden, dims)
            pruned = apply_plan(self.model, plan)
            reconstruct(
                self.model,
                pruned,
                plan,
                context["batches"],
                mode=config.reconstruct,
                ridge=config.ridge,
                show_progress=False,
                cache=context["cache"] if least_squares else None,
                refit_target=config.refit_target,
                layers=[idx] if least_squares else None,
                start=(idx, calibration) if least_squares else None,
            )
            skip = (
                skipped_layers(pruned, idx, [h for h, _, _ in held_out_inputs], like)
                if shared
                else contextlib.nullcontext()
            )
            with skip:
                outputs = model_outputs(pruned, held_out)
            points.setdefault((idx, group), {})[kept] = divergence(reference, outputs, plan.hidden)
        curves = {
            (idx, group): sensitivity_curve(values, getattr(base_dims[idx], dict(FIELDS)[group]))
            for (idx, group), values in points.items()
        }
        self._sensitivity = {f"{idx}.{group}": values for (idx, group), values in points.items()}
        self._sensitivity_curves = (key, curves)
        return allocate_dims(scores, loss_curves=curves, **common)

    # ---- latency targets (SNPConfig.target_latency) -------------------------------------------------------
    def _latency_target(self, config: SNPConfig, kept_hidden: int, base_dims: list) -> tuple[LatencyModel, float]:
        """(latency model, internal target in estimated ms). On the first call of a prune(): the latency model is
        built (or loaded from its cache) and the unpruned model measured; the target is mapped into the estimate's
        scale (a fraction of the unpruned model's estimate, or the ms target times estimate / measured)."""
        state = self._latency
        if state is None or state["kept_hidden"] != kept_hidden:
            batch = config.latency_batch_size
            model = LatencyModel.build(self.model, batch_size=batch, hidden_size=kept_hidden)
            unpruned_ms = measure_latency({"original": self.model}, batch_size=batch)["original"]
            adapter = get_adapter(self.model)
            # with hidden pruning the grid is measured at the kept width: the unpruned model's own latency then
            unpruned_estimate = (
                model.estimate(adapter.layer_dims()) if kept_hidden == adapter.hidden_size else model.model_ms
            )
            fraction = config.target_latency <= 1
            target_ms = config.target_latency * unpruned_ms if fraction else float(config.target_latency)
            state = self._latency = dict(
                kept_hidden=kept_hidden,
                model=model,
                unpruned_ms=unpruned_ms,
                unpruned_estimate_ms=unpruned_estimate,
                target_ms=target_ms,
                internal_ms=target_ms * unpruned_estimate / unpruned_ms,
                rounds=[],
            )
        return state["model"], state["internal_ms"]

    def _calibrate_latency(self, config: SNPConfig, ratios: PruningRatios, scores, max_rounds: int = 3) -> None:
        """Allocates with the latency model, builds the pruned model (sliced, no refit: latency depends on the dims
        only), measures it interleaved with the unpruned one, and while it misses the target by more than
        LATENCY_ACCEPT (2.5%: aiming inside a 5% band, since a re-measurement moves by a few percent) moves the
        internal target (`_next_internal_target`: scaled, then along the secant of two rounds) and allocates again
        (`max_rounds` rounds at most). The round that came closest sets the internal target every candidate
        allocation then uses. The measured model is the first candidate allocated from SNP's scores ('scores^e'), or
        the only one ('uniform'). Every measurement is paired (`measure_latency(..., reference="original")`)."""
        batch = config.latency_batch_size
        for round_idx in range(max_rounds):
            try:
                candidates = self._candidate_dims(config, ratios, scores)
            except ValueError:
                if round_idx == 0:
                    raise
                break  # the rescaled target fell below what the model reaches: keep the rounds so far
            state = self._latency
            name, kept_hidden, dims = next((c for c in candidates if c[0].startswith("scores")), candidates[0])
            pruned = apply_plan(self.model, plan_from_kept_dims(scores, kept_hidden, dims))
            measured = measure_latency(
                {"original": self.model, "pruned": pruned}, batch_size=batch, reference="original"
            )
            if config.target_latency <= 1:  # a fraction: of the unpruned model measured alongside
                state["target_ms"] = config.target_latency * measured["original"]
            error = measured["pruned"] / state["target_ms"] - 1
            state["rounds"].append(
                dict(
                    allocation=name,
                    internal_target_ms=state["internal_ms"],
                    estimate_ms=round(state["model"].estimate(dims), 4),
                    measured_ms=round(measured["pruned"], 4),
                    unpruned_measured_ms=round(measured["original"], 4),
                    target_ms=round(state["target_ms"], 4),
                    error=round(error, 4),
                )
            )
            state.setdefault("round_dims", []).append(list(dims))
            if abs(error) <= LATENCY_ACCEPT:
                break
            state["internal_ms"] = _next_internal_target(state["rounds"])
        state = self._latency
        best = min(range(len(state["rounds"])), key=lambda i: abs(state["rounds"][i]["error"]))
        state["internal_ms"] = state["rounds"][best]["internal_target_ms"]
        state["measured_dims"] = state["round_dims"][best]  # `_settle_latency` re-allocates other dims only

    def _measure_against_target(self, config: SNPConfig, pruned: nn.Module) -> dict:
        """{"original", "pruned" (ms, measured interleaved), "target_ms", "error"} of `pruned` (a fractional target
        is a fraction of the unpruned model measured alongside)."""
        measured = measure_latency(
            {"original": self.model, "pruned": pruned}, batch_size=config.latency_batch_size, reference="original"
        )
        fraction = config.target_latency <= 1
        target_ms = config.target_latency * measured["original"] if fraction else float(config.target_latency)
        return {**measured, "target_ms": target_ms, "error": measured["pruned"] / target_ms - 1}

    def _settle_latency(self, config: SNPConfig, ratios: PruningRatios, scores, search: CandidateSearch, result):
        """The chosen candidate against the latency target. `_calibrate_latency` set the internal target on one
        allocation (the first from SNP's scores); the held-out comparison may choose another, whose measured latency
        at the same estimate differs (the latency model's error depends on where the allocation puts the cuts). So
        the returned model is measured again; unless its dims are the ones the closest round measured, and while it
        misses by more than LATENCY_ACCEPT, its own allocation is re-allocated at a moved internal target
        (`_next_internal_target` over its own rounds), sliced and measured (MAX_SETTLE_ROUNDS at most); the closest
        is refit and returned. Returns (plan, pruned model, entry of the candidates tried, reconstruction report, its
        measurement)."""
        plan, pruned, chosen, reconstruction = result
        state = self._latency
        name = chosen["allocation"]
        qk_name = chosen["qk_criterion"] if chosen["qk_criterion"] in search.qk_variants else None
        qk_name = qk_name or next(iter(search.qk_variants))  # 'validated_per_layer': the refit chooses again
        measured = self._measure_against_target(config, pruned)
        rounds = [dict(allocation=name, internal_target_ms=state["internal_ms"], error=measured["error"])]
        best = (measured, None, state["internal_ms"])  # (measurement, candidate, internal target); None: returned
        # the dims the closest round measured: a second measurement of the same model only adds noise to chase
        calibrated = plan.layer_dims() == state.get("measured_dims")
        for _ in range(0 if calibrated else MAX_SETTLE_ROUNDS):
            if abs(best[0]["error"]) <= LATENCY_ACCEPT:
                break
            state["internal_ms"] = _next_internal_target(rounds)
            try:
                candidates = self._candidate_dims(config, ratios, scores, unique=False)
            except ValueError:  # the moved target is beyond what the model reaches
                break
            candidate = next((c for c in candidates if c[0] == name), None)
            if candidate is None:
                break
            # latency depends on the dims alone: the sliced model is measured, only the closest is refit
            sliced = apply_plan(self.model, plan_from_kept_dims(search.qk_variants[qk_name], *candidate[1:]))
            trial = self._measure_against_target(config, sliced)
            del sliced
            rounds.append(dict(allocation=name, internal_target_ms=state["internal_ms"], error=trial["error"]))
            if abs(trial["error"]) < abs(best[0]["error"]):
                best = (trial, candidate, state["internal_ms"])
        state["settle_rounds"] = [
            {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rounds
        ]
        measured, corrected, state["internal_ms"] = best
        if corrected is not None:
            plan, pruned, chosen, reconstruction = search.refit(qk_name, corrected)
        return plan, pruned, chosen, reconstruction, measured

    def _latency_report(self, config: SNPConfig, plan: PruningPlan, measured: dict) -> dict:
        """`report["latency"]`: the target, the estimate and the measured latency of the returned model
        (`measured`: `_measure_against_target`'s)."""
        state = self._latency
        batch = config.latency_batch_size
        target_ms = measured["target_ms"]
        model = state["model"]
        return {
            "target": config.target_latency,
            "target_ms": round(target_ms, 4),
            "batch_size": batch,
            "threads": torch.get_num_threads(),
            "device": model.key["device"],
            "dtype": model.key["dtype"],
            "unpruned_ms": round(measured["original"], 4),
            "unpruned_estimate_ms": round(state["unpruned_estimate_ms"], 4),
            "internal_target_ms": round(state["internal_ms"], 4),
            "estimate_ms": round(model.estimate(plan.layer_dims()), 4),
            "measured_ms": round(measured["pruned"], 4),
            "error": round(measured["pruned"] / target_ms - 1, 4),
            "rounds": len(state["rounds"]),
            "round_details": [
                {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in state["rounds"]
            ],
            # the chosen allocation's own rounds: the returned model first, then its re-allocations (if it missed)
            "settle_rounds": state["settle_rounds"],
            "build_seconds": round(model.build_seconds, 3),
            "loaded_from_cache": model.loaded,
            "cache_file": model.path,
        }

    def _report(self, config, criteria, plan, pruned, batches, scoring_s, total_s) -> dict:
        before, after = model_size_of(self.model), model_size_of(pruned)
        return build_report(
            source=self.source,
            architecture=type(pruned).__name__,
            size_before=before,
            size_after=after,
            hidden_before=self.model.config.hidden_size,
            hidden_after=len(plan.hidden),
            dims_before=get_adapter(self.model).layer_dims(),
            dims_after=plan.layer_dims(),
            criteria=criteria,
            num_calibration_samples=sum(batch_length(b) for b in batches) if batches else 0,
            target_macs=config.target_macs
            or (config.target_macs_ratio * before.macs if config.target_macs_ratio else None),
            seconds={"scoring": round(scoring_s, 3), "total": round(total_s, 3)},
        )

    # ---- saving -----------------------------------------------------------------------------------------
    def save(
        self,
        pruned: nn.Module,
        save_dir: str | os.PathLike,
        config: SNPConfig | None = None,
        overwrite: bool = False,
        results: dict | None = None,
    ) -> str:
        """`pruned.save_pretrained` (model, image processor, snp_config.json, plan, report, model card with the
        pruning-profile plot) into a temp folder, then renamed to `save_dir`. `results` (as in
        `card.write_model_card`) are added to what the model carries; `config` replaces the recorded SNPConfig."""
        check_output_dir(save_dir, overwrite, source=self.source)
        info = get_pruning_info(pruned)
        if info is None:
            info = PruningInfo(report=self.report, plan=self.plan, base_model=self.source)
            attach_pruning_info(pruned, info)
        if config is not None:
            info.snp_config = config
        if info.image_processor is None:
            info.image_processor = self.preprocessor
        if results:
            record_results(pruned, results)
        target = os.path.realpath(os.fspath(save_dir))
        previous, info.name = info.name, os.path.basename(target)  # the card names the folder, not the temp one
        try:
            with atomic_directory(target) as tmp:
                pruned.save_pretrained(tmp)
        finally:
            info.name = previous
        logger.info("Saved the pruned model to %s", target)
        return target


def load_model(source: str, **kwargs) -> nn.Module:
    """The model saved in the folder or Hub repo `source`, with the Auto class of the class its config names
    (`AutoModel` when it names none, e.g. a sentence-transformers folder). timm checkpoints (`timm/<name>` ids, timm
    folders, TimmWrapper configs) come back converted to transformers' ViT/DeiT (see `adapters.timm`)."""
    import transformers

    if is_timm_source(source):
        return load_timm_source(source, with_image_processor=False, **kwargs)[0]
    try:
        config = transformers.AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"Could not load {source!r} (its config): {err} Pass a folder saved with save_pretrained, a Hub id, or a "
            "model instance."
        ) from err
    if config.model_type == "timm_wrapper":  # a timm checkpoint on the Hub outside the timm organisation
        return load_timm_source(source, with_image_processor=False, **kwargs)[0]
    architectures = getattr(config, "architectures", None) or []
    try:
        adapter_cls = adapter_class_for(config)
        name = architectures[0] if architectures else next(n for n in adapter_cls.snp_classes if n.endswith("Model"))
        auto = adapter_cls.auto_class_name(name)
    except ValueError:
        name = architectures[0] if architectures else "model"
        raise ValueError(
            f"optimum-snp supports {', '.join(supported_model_classes())}; not {name} "
            f"(model_type={config.model_type!r}) in {source!r}. Load a supported class and pass the instance."
        ) from None
    return getattr(transformers, auto).from_pretrained(source, **kwargs)


def _next_internal_target(rounds: list[dict]) -> float:
    """The internal target (estimated ms) of the next latency round, from the rounds so far (each: its internal
    target and its relative `error` against the target, measured / target - 1): after one round, scaled by
    1 / (1 + error); after more, the secant through the two rounds nearest the target, where the error is 0 (the
    measured latency is roughly affine in the estimate, with an offset that the scaling alone overshoots: DeiT-S at
    batch 16 measured 256 and 517 ms for estimates of 406 and 605 ms), unless their slope is not positive (noise)
    or the secant's step is more than twice the scaled one: then scaled from the nearest round."""
    nearest = sorted(rounds, key=lambda r: abs(r["error"]))
    a = nearest[0]
    scaled = a["internal_target_ms"] / (1 + a["error"])
    if len(nearest) > 1:
        b = nearest[1]
        run = a["internal_target_ms"] - b["internal_target_ms"]
        slope = (a["error"] - b["error"]) / run if run else 0.0
        secant = a["internal_target_ms"] - a["error"] / slope if slope > 0 else None
        # a nearly flat secant (two noisy rounds close together) extrapolates far: then the scaled step, which moves
        # at most by the relative miss (DeiT-S, batch 16: a secant step of 990 ms where scaling moved 20 ms)
        if secant is not None and abs(secant - a["internal_target_ms"]) <= 2 * abs(scaled - a["internal_target_ms"]):
            return max(secant, 1e-6)
    return scaled


def _remove_blocks(dims: list, config: SNPConfig, adapter) -> list:
    """`dims` with the blocks `config.remove_attention` / `config.remove_mlp` removed (their dims set to 0)."""
    if not (config.remove_attention or config.remove_mlp or config.block_pruning):
        return list(dims)
    if not adapter.supports_block_removal:
        raise ValueError(
            "Block pruning (remove_attention, remove_mlp, block_pruning=True) is not available for "
            f"{type(adapter.model).__name__}: its pruned family keeps every block. Use it with ViT/DeiT models."
        )
    bad = sorted(i for i in [*config.remove_attention, *config.remove_mlp] if i >= len(dims))
    if bad:
        raise ValueError(
            f"remove_attention / remove_mlp name layers {bad}, but the model has {len(dims)} layers "
            f"(0..{len(dims) - 1})."
        )
    out = list(dims)
    for idx in config.remove_attention:
        out[idx] = replace(out[idx], num_heads=0, qk_head_dim=0, v_head_dim=0)
    for idx in config.remove_mlp:
        out[idx] = replace(out[idx], intermediate_size=0)
    return out


LATENCY_ACCEPT = 0.025  # relative miss of a latency target that ends the allocation rounds
MAX_SETTLE_ROUNDS = 2  # re-allocations of the chosen allocation when the returned model misses the latency target


def _has_choices(config: SNPConfig, criteria: dict) -> bool:
    """Whether prune() will compare candidates on held-out images (allocation and/or query/key criterion)."""
    if config.has_target and config.allocation in ("validated", "sensitivity"):
        return True
    qk_pruned = config.has_target or SNPConfig._nonzero(config.qk_ratio)
    # ('validated_per_layer' is chosen inside the least-squares refit, on the calibration images)
    return criteria["qk"] in ("validated", "validated_before_refit") and qk_pruned


def _check_device(model: nn.Module) -> None:
    """Pruning runs where the model is, on one device: clear errors for weights not loaded (meta) or spread over
    several devices (e.g. `device_map="auto"`)."""
    devices = {t.device for t in (*model.parameters(), *model.buffers())}
    if any(d.type == "meta" for d in devices):
        raise ValueError(
            f"{type(model).__name__} has weights on the meta device (not loaded, e.g. built under init_empty_weights "
            "or with device_map='meta'); load its weights, then prune it."
        )
    if len(devices) > 1:
        raise ValueError(
            f"{type(model).__name__} is spread over several devices ({', '.join(sorted(map(str, devices)))}); pruning "
            "runs on one: move it there first, e.g. model.to('cuda')."
        )


__all__ = ["PLAN_NAME", "REPORT_NAME", "SNPPruner"]
