"""Validation: candidate pruned models compared on held-out calibration samples (the step after reconstruct).

`prune()` may build several candidates from the same scores: allocations (`allocation="validated"`: uniform
ratios, greedy allocations of SNP's and of weight-magnitude scores, measured sensitivity curves) and query/key
criteria (`criterion={"qk": "validated"}`: SNP's `attention_kl` or weight magnitude). Each is sliced and
reconstructed, and the one whose outputs stay closest to the unpruned model's on samples held out from scoring
wins (`divergence`: KL of the logits, or the hidden-state / sentence-embedding error of a base model). This
module holds that comparison: the held-out reference (`HeldOut`), the divergence, the paired rule against uniform
ratios, and the search over candidates (`CandidateSearch`).
"""

from __future__ import annotations

import contextlib
import time
import warnings

import torch
from torch import nn

from .accounting import model_size_of
from .adapters import get_adapter
from .calibration import batch_length
from .config import SNPConfig
from .plan import plan_from_kept_dims
from .reconstruction import chosen_plan, reconstruct, skipped_layers
from .slicing import apply_plan
from .utils import mean_pool


PAIRED_LEVEL = 0.05  # one-sided level of `paired_better` (conventional, not fitted)


def prunes_qk(kept_dims: list, source_dims: list) -> bool:
    """Whether any layer of `kept_dims` keeps fewer query/key dims per head than the unpruned model's."""
    return any(d.qk_head_dim < o.qk_head_dim for d, o in zip(kept_dims, source_dims, strict=True))


def _output_rows(outputs, mask: torch.Tensor | None, pooled: bool = False) -> tuple[list[torch.Tensor], str]:
    """(row groups, kind) of a model output: class logits ('logits': one row per input, or per real token), start
    and end logits of question answering ('logits': two rows per sequence, over its real tokens), or hidden states
    of base models ('hidden': one row per real token; with `pooled`, 'pooled': their mean per sequence, the sentence
    embedding)."""
    if getattr(outputs, "start_logits", None) is not None:
        spans = torch.stack([outputs.start_logits, outputs.end_logits], dim=1)  # (batch, 2, tokens)
        reals = mask.to(spans.device) if mask is not None else torch.ones_like(spans[:, 0], dtype=torch.bool)
        return [span[:, real] for span, real in zip(spans, reals, strict=True)], "logits"
    rows, kind = getattr(outputs, "logits", None), "logits"
    if rows is None:
        rows, kind = outputs.last_hidden_state, "hidden"
        if pooled:
            real = mask if mask is not None else torch.ones(rows.shape[:2], dtype=torch.bool)
            return [mean_pool(rows, real)], "pairwise" if pooled == "pairwise" else "pooled"
    if rows.dim() == 3:
        rows = rows[mask.to(rows.device)] if mask is not None else rows.flatten(0, 1)
    return [rows], kind


class OutputRecorder:
    """The model's outputs (logits, or a base model's last hidden state) of its first `num_batches` forward passes,
    recorded by a forward hook during a pass the caller runs anyway (the scoring pass)."""

    def __init__(self, model: nn.Module, num_batches: int):
        self.model, self.num_batches, self.outputs, self._handle = model, num_batches, [], None

    @property
    def complete(self) -> bool:
        return len(self.outputs) == self.num_batches

    def _record(self, module, args, output) -> None:
        if len(self.outputs) < self.num_batches:
            self.outputs.append(output)

    def __enter__(self) -> OutputRecorder:
        self._handle = self.model.register_forward_hook(self._record)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def rows(self, adapter, batches: list) -> tuple[list[torch.Tensor], str]:
        """What `model_outputs(model, batches)` returns, from the recorded outputs of the same batches."""
        groups, kind = [], "logits"
        for output, batch in zip(self.outputs, batches, strict=True):
            rows, kind = _output_rows(output, adapter.token_mask(batch), adapter.pooled_divergence)
            groups += [r.detach().float() for r in rows]
        return groups, kind


@torch.no_grad()
def model_outputs(model: nn.Module, batches: list) -> tuple[list[torch.Tensor], str]:
    """The model's output row groups on `batches` (see `_output_rows`), in eval mode."""
    adapter = get_adapter(model)
    was_training = model.training
    model.eval()
    try:
        groups, kind = [], "logits"
        for batch in batches:
            outputs = model(**adapter.model_inputs(batch))
            rows, kind = _output_rows(outputs, adapter.token_mask(batch), adapter.pooled_divergence)
            groups += [r.float() for r in rows]
        return groups, kind
    finally:
        model.train(was_training)


def divergence(reference: tuple, outputs: tuple, hidden: list[int], per_row: bool = False):
    """KL(reference || outputs) of the softmax of logits, averaged over rows; for a base model's hidden states,
    their mean squared error relative to the reference's mean square, or for pooled ones (sentence embeddings) the
    mean of 1 - cosine, or ('pairwise') the mean squared change of the cosine similarity of every pair of rows (on
    the kept `hidden` channels). With `per_row`, the per-row terms (a float64 tensor) whose
    mean that is."""
    (ref_groups, kind), out_groups = reference, outputs[0]
    if kind == "logits":
        kls = []
        for ref, out in zip(ref_groups, out_groups, strict=True):
            log_p, log_q = ref.log_softmax(-1), out.log_softmax(-1)
            kls.append((log_p.exp() * (log_p - log_q)).sum(-1))
        rows = torch.cat(kls)
    else:
        ref, out = torch.cat(ref_groups), torch.cat(out_groups)
        if ref.shape[-1] != out.shape[-1]:
            ref = ref[..., hidden]
        if kind == "pooled":
            rows = 1 - torch.nn.functional.cosine_similarity(ref, out, dim=-1)
        elif kind == "pairwise":  # per row: the mean squared change of its cosine similarity to every other row
            normal = torch.nn.functional.normalize
            ref, out = normal(ref.double(), dim=-1), normal(out.double(), dim=-1)
            rows = (ref @ ref.T - out @ out.T).square().sum(-1) / max(len(ref) - 1, 1)
        elif not per_row:
            return float((ref - out).pow(2).mean() / ref.pow(2).mean().clamp_min(1e-30))
        else:
            rows = (ref - out).pow(2).mean(-1) / ref.pow(2).mean().clamp_min(1e-30)
    return rows.double() if per_row else float(rows.mean())


def paired_better(rows: torch.Tensor, baseline: torch.Tensor) -> tuple[bool, float]:
    """(whether `rows` is lower than `baseline` at the 5% level, the p-value): a one-sided paired t-test on the
    per-row divergences of two candidates on the same held-out rows."""
    from scipy.stats import t as student_t

    diff = (rows - baseline).double()
    n = diff.numel()
    if n < 2:
        return False, 1.0
    spread = float(diff.std())
    if spread == 0.0:
        return float(diff.mean()) < 0, 0.0 if float(diff.mean()) < 0 else 1.0
    p = float(student_t.cdf(float(diff.mean()) / (spread / n**0.5), df=n - 1))
    return p < PAIRED_LEVEL, p


class HeldOut:
    """The held-out samples that choose among candidates and the unpruned model's outputs on them, computed on first
    use. With no samples left to hold out, candidates are compared on the calibration samples themselves, and the
    unpruned outputs come from `recorder` (recorded during the scoring pass) when it holds them."""

    def __init__(
        self,
        model: nn.Module,
        batches: list | None,
        held_out: list | None,
        recorder,
        num_samples: int,
        warned: bool = False,
    ):
        self.model, self.batches, self.recorder, self.num_samples = model, batches, recorder, num_samples
        self.batches_held_out = held_out
        self.reference = None
        self.warned = warned  # the caller already said that nothing was left to hold out

    def get(self) -> tuple[list, tuple]:
        """(held-out batches, the unpruned model's output rows on them)."""
        if self.reference is not None:
            return self.batches_held_out, self.reference
        if not self.batches_held_out and self.batches and not self.warned:
            warnings.warn(
                "No calibration images were left to hold out to choose the allocation / query-key criterion (the "
                f"dataset has at most num_calibration_samples={self.num_samples}); candidates are "
                "compared on the calibration images themselves.",
                UserWarning,
                stacklevel=4,
            )
        self.batches_held_out = self.batches_held_out or self.batches
        if not self.batches_held_out:
            raise ValueError(
                "allocation='validated' or 'sensitivity' and the 'validated' query/key criterion compare "
                "candidates on calibration images; pass `calibration_dataset`, or use allocation='scores' or "
                "'uniform' and criterion='magnitude'."
            )
        if self.recorder is not None and self.batches_held_out is self.batches and self.recorder.complete:
            self.reference = self.recorder.rows(get_adapter(self.model), self.batches)
        else:
            self.reference = model_outputs(self.model, self.batches_held_out)
        return self.batches_held_out, self.reference

    @property
    def are_calibration(self) -> bool:
        """Whether the comparison runs on the calibration batches themselves (nothing was held out)."""
        return self.batches_held_out is self.batches

    @property
    def num_rows(self) -> int:
        return sum(batch_length(b) for b in self.batches_held_out)


class CandidateSearch:
    """The candidates of one `prune()`: each (allocation name, kept hidden channels, per-layer dims) is sliced with
    the query/key scores of each criterion in `qk_variants`, reconstructed, and measured on the held-out samples.

    Order of the choice: 1. the allocation, with the first criterion (with `validated_before_refit`, the criterion
    whose sliced model is closer, before any refit); with validation_rule='paired' the argmin replaces uniform
    ratios only where it is lower row by row, beyond chance; 2. for the chosen dims, every other query/key criterion
    (one more refit each), and the lowest divergence wins. `validated_per_layer` chooses inside the one refit."""

    def __init__(
        self,
        model: nn.Module,
        config: SNPConfig,
        criteria: dict,
        qk_variants: dict,
        batches: list | None,
        cache,
        held_out: HeldOut,
        show_progress: bool,
    ):
        self.model, self.config, self.criteria, self.qk_variants = model, config, criteria, qk_variants
        self.batches, self.cache, self.held_out, self.show_progress = batches, cache, held_out, show_progress
        self.source_dims = get_adapter(model).layer_dims()
        self.local_qk = self.before_refit = False  # set by run(), from the candidates
        self.reference = None
        self.tried: list[dict] = []  # every refit candidate: criterion, allocation, divergence, MACs
        self.sliced_tried: list[dict] = []  # 'validated_before_refit': the criteria compared on the sliced models
        self.per_row: dict[int, torch.Tensor] = {}  # candidate index -> per-row divergences (rule 'paired')
        self.reconstruction_s = 0.0
        # 'validated_before_refit' with reconstruct='none': allocation -> (criterion, sliced model, its held-out
        # outputs) of the criterion it chose: that model is the candidate, measured already
        self._sliced: dict[str, tuple] = {}

    def run(self, candidates: list[tuple[str, int, list]]):
        """(plan, pruned model, the chosen entry of `tried`, the reconstruction report) of the best candidate."""
        if not prunes_qk(candidates[0][2], self.source_dims):
            self.qk_variants = dict(list(self.qk_variants.items())[:1])  # query/key not pruned: nothing to choose
        several = len(self.qk_variants) > 1
        # 'validated_per_layer': the query/key criterion chosen per layer inside the least-squares refit, on its error
        self.local_qk = several and self.criteria["qk"] == "validated_per_layer"
        # 'validated_before_refit': each candidate's query/key criterion is the one whose sliced model (no refit)
        # keeps the outputs closest on the held-out samples; only that one is refit
        self.before_refit = several and self.criteria["qk"] == "validated_before_refit"
        if len(candidates) > 1 or (len(self.qk_variants) > 1 and not self.local_qk):
            self.held_out.get()
        # measured whenever the reference exists (also when an earlier step, allocation='sensitivity', computed it)
        self.reference = self.held_out.reference
        results = [self._evaluate(self._qk_before_refit(*candidate), *candidate) for candidate in candidates]
        best = _lowest(results)
        uniform = next((i for i, r in enumerate(results) if r[1]["allocation"] == "uniform"), None)
        if self.per_row and uniform is not None and best is not results[uniform]:
            better, p_value = paired_better(self.per_row[results.index(best)], self.per_row[uniform])
            self.tried[results.index(best)]["p_value_vs_uniform"] = p_value
            if not better:
                best = results[uniform]
        dims = next(c for c in candidates if c[0] == best[1]["allocation"])
        if not (self.local_qk or self.before_refit) and prunes_qk(dims[2], self.source_dims):
            results += [self._evaluate(name, *dims) for name in list(self.qk_variants)[1:]]
        # the query/key criterion: the lowest divergence among the chosen dims' candidates
        _, chosen, plan, pruned, reconstruction = _lowest(
            r for r in results if r[1]["allocation"] == best[1]["allocation"]
        )
        return plan, pruned, chosen, reconstruction

    def refit(self, qk_name: str, candidate: tuple[str, int, list]):
        """(plan, pruned model, entry of `tried`, reconstruction report) of one more candidate (name, kept hidden
        channels, per-layer dims) built as `run()` builds them, with the query/key criterion `qk_name` (one of
        `qk_variants`; with 'validated_per_layer' the refit chooses per layer again)."""
        _, entry, plan, pruned, reconstruction = self._evaluate(qk_name, *candidate)
        return plan, pruned, entry, reconstruction

    def _qk_before_refit(self, name: str, kept_hidden: int, kept_dims: list) -> str:
        """The query/key criterion to refit for this allocation: with 'validated_before_refit', the one whose sliced
        model is closest to the unpruned one on the held-out samples; else the first."""
        if not self.before_refit or not prunes_qk(kept_dims, self.source_dims):
            return next(iter(self.qk_variants))
        held_out, _ = self.held_out.get()
        divergences, sliced = {}, {}
        for qk_name, qk_scores in self.qk_variants.items():
            plan = plan_from_kept_dims(qk_scores, kept_hidden, kept_dims)
            model = apply_plan(self.model, plan)
            outputs = model_outputs(model, held_out)
            divergences[qk_name] = divergence(self.reference, outputs, plan.hidden)
            self.sliced_tried.append({"qk_criterion": qk_name, "allocation": name, "divergence": divergences[qk_name]})
            if self.config.reconstruct == "none":
                sliced[qk_name] = (model, outputs)
        chosen = min(divergences, key=divergences.get)
        if chosen in sliced:
            self._sliced[name] = (chosen, *sliced[chosen])
        return chosen

    def _evaluate(self, qk_name: str, name: str, kept_hidden: int, kept_dims: list):
        """(divergence, entry, plan, pruned model, reconstruction report) of one candidate."""
        config, criteria = self.config, self.criteria
        plan = plan_from_kept_dims(self.qk_variants[qk_name], kept_hidden, kept_dims)
        plan.metadata.update(criteria={**criteria, "qk": qk_name}, snp_config=config.to_dict())
        # the least-squares refit chooses each layer's query/key rows among the criteria's (no second candidate)
        alternatives = None
        if self.local_qk and prunes_qk(kept_dims, self.source_dims):
            alternatives = {
                qk: plan_from_kept_dims(scores, kept_hidden, kept_dims) for qk, scores in self.qk_variants.items()
            }
        reused = self._sliced.pop(name, None) if config.reconstruct == "none" else None
        if reused is not None and reused[0] != qk_name:
            reused = None
        pruned = reused[1] if reused is not None else apply_plan(self.model, plan)
        sliced = time.perf_counter()
        # compared on the calibration samples themselves (none held out): the refit's pass over them already
        # computed the pruned model's last hidden states, so only the embeddings and the head run again
        capture = (
            {}
            if self.reference is not None and self.held_out.are_calibration and config.reconstruct == "least_squares"
            else None
        )
        reconstruction = reconstruct(
            self.model,
            pruned,
            plan,
            self.batches,
            mode=config.reconstruct,
            ridge=config.ridge,
            show_progress=self.show_progress and self.reference is None,
            cache=self.cache,
            qk_alternatives=alternatives,
            refit_target=config.refit_target,
            capture=capture,
        )
        if alternatives:
            plan = chosen_plan(plan, alternatives, reconstruction)
            plan.metadata["criteria"]["qk"] = qk_name = "validated_per_layer"
        self.reconstruction_s += time.perf_counter() - sliced
        value = None
        if self.reference is not None:
            held_out, _ = self.held_out.get()
            skip = (
                skipped_layers(pruned, get_adapter(pruned).num_layers, capture["hidden"], capture["like"])
                if capture
                else contextlib.nullcontext()
            )
            if reused is not None:  # the sliced model's outputs, measured when its criterion was chosen
                outputs = reused[2]
            else:
                with skip:
                    outputs = model_outputs(pruned, held_out)
            value = divergence(self.reference, outputs, plan.hidden)
            if config.validation_rule == "paired":
                self.per_row[len(self.tried)] = divergence(self.reference, outputs, plan.hidden, per_row=True)
        entry = {"qk_criterion": qk_name, "allocation": name, "divergence": value}
        self.tried.append({**entry, "macs": model_size_of(pruned).macs})
        return value, entry, plan, pruned, reconstruction


def _lowest(results):
    """The result with the lowest divergence (None: nothing measured, a single candidate)."""
    return min(results, key=lambda r: r[0] if r[0] is not None else 0.0)


__all__ = ["CandidateSearch", "HeldOut", "OutputRecorder", "divergence", "model_outputs", "paired_better", "prunes_qk"]
