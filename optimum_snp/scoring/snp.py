"""SNP's data-driven criteria, from one calibration pass with forward hooks (SNP_METHOD section 3).

Every statistic is a running sum over images, updated batch by batch inside the hooks, so memory does not grow
with the number of calibration images beyond one batch of activations per layer.

Query/key criteria (per head, per filter i; Q, K are the head's N x d query/key activations, s the logit scale):
    "attention"     first-order change of the attention probabilities when pair i is removed:
                    ||dA||^2 = s^2 sum_t q_i[t]^2 sum_u A_tu^2 (k_i[u] - <A_t, k_i>)^2   (what softmax sees)
    "svd"           the paper's literal criterion: sum_{j<=r} |s (u_j . q_i)(k_i . v_j)| over the top-r
                    singular triplets of the logit matrix S = s Q K^T
    "svd_centered"  the same on the row-centred logits (the per-row constant that softmax ignores removed)
    "qk_norm"       ||q_i|| * ||k_i||
    "attention_iterative"  the "attention" criterion with removal and re-computation: QK_ROUNDS calibration
                    passes; after pass r the weakest pairs of every head are removed (down to 1/2, 1/4, ... of the
                    dims) and the next pass scores the rest with the attention recomputed without them. A pair's
                    score is its score in the pass that removed it, made increasing along the removal order.
    "attention_kl"  the second-order KL of every attention row when a SET R of pairs is removed (softmax's Fisher
                    metric): KL(A_t || A'_t) ~ 1/2 Var_{u ~ A_t}[dS_tu], dS = -s sum_{i in R} q_i k_i^T, so
                    E(R) = 1_R^T M 1_R with M_ij = s^2 sum_t q_i[t] q_j[t] Cov_{A_t}(k_i, k_j) (a d x d matrix per
                    head, summed over images; at most QUERY_SAMPLE query rows per image); pairs removed greedily, as
                    for "logits".
    "attention_kl_cls"  "attention_kl" with the rows the task head reads (the class token; DeiT with teacher: class and
                    distillation tokens) counted again, so that together they weigh as much as all rows: an average
                    row's attention is not what a classifier reads (README). Where the head reads every token (base
                    models, pooled embeddings) it is "attention_kl".
    "attention_output"  the second-order change of what the attention block adds to the residual stream when a SET R
                    of pairs is removed: the first-order change of row t of the attention output through o_proj,
                    dO_t = W_o V^T (A_t * (dS_t - <A_t, dS_t>)), so E(R) = sum_t ||dO_t||^2 = 1_R^T M 1_R with
                    M_ij = s^2 sum_t q_i[t] q_j[t] <U_t[:, i], U_t[:, j]>, U_t = L^T V^T diag(A_t) (K - 1 <A_t, K>)
                    (L L^T = W_o,h^T W_o,h per head): attention_kl's Fisher metric replaced by what the value vectors
                    and the output projection make of the change; same query-row sample, greedy removal
    "logits"        the change of the row-centred logits when a SET R of pairs is removed, exactly:
                    E(R) = s^2 ||sum_{i in R} q_i (k_i - mean_u k_i)^T||_F^2 = s^2 1_R^T (Q^T Q * Kc^T Kc) 1_R,
                    summed over images (a d x d matrix per head); pairs are removed greedily, each time the one
                    that raises E least, so interactions between pairs count at any removal ratio. A pair's
                    score is E's increase when it is removed (made non-decreasing along the removal order).
Value criteria (per head h, filter i; o_hi = A_h v_i, the N-vector sent to o_proj):
    "contribution"  ||o_hi|| * ||W_o[:, (h, i)]||
    "redundancy"    the paper's: contribution * (1 - rho_hi), rho = max |cos(o_hi, o_gj)| over other heads g, with
                    the greedy update when filters are removed (see `plan.greedy_redundancy_keep`)
    "redundancy_only"  1 - rho_hi (greedy as well)
MLP unit j: E||act_j|| * ||W_fc2[:, j]||. Head h: E||O_h W_o,h^T||. Hidden channel c: sum over every LayerNorm
output of E[x_c^2] times the squared norm of the columns c of the weights that read it (q/k/v, fc1, heads).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .. import config as _config
from ..adapters import get_adapter
from ..config import VALIDATED_QK
from .base import GroupScores, LayerScores
from .magnitude import magnitude_scores, random_scores


def _col_sq_norms(weight: torch.Tensor, row_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Squared norm of every column of `weight` (out, in), its rows first multiplied by `row_scale` (what the output
    channels are multiplied by before they reach the residual stream: layer scale, an inference-mode BatchNorm)."""
    weight = weight.detach().float()
    if row_scale is not None:
        weight = weight * row_scale.detach().float().to(weight.device)[:, None]
    return weight.pow(2).sum(0)


# query rows per image used by "attention_kl" (all of them when there are fewer), drawn at random per image: on the
# tune models 16 gave the same KL as all rows (within 0.004), at a quarter of the cost on DeiT-B (198 tokens)
QUERY_SAMPLE = 16
QK_ROUNDS = 3  # calibration passes of the "attention_iterative" query/key criterion


class _LayerStats:
    def __init__(self, dims):
        self.dims = dims
        self.q = None
        self.k = None
        self.v = None  # "attention_output" only
        self.out_factor = None  # "attention_output": from o_proj's weights, computed once per pass
        self.qk_kept = torch.ones(dims.num_heads, dims.qk_head_dim, dtype=torch.bool)  # attention_iterative
        self.qk_removed_at = torch.full((dims.num_heads, dims.qk_head_dim), -1)  # pass that removed each pair
        self.qk_removed_score = torch.zeros(dims.num_heads, dims.qk_head_dim, dtype=torch.float64)
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, name, value: torch.Tensor):
        value = value.detach().double()
        self.sums[name] = self.sums[name] + value if name in self.sums else value


class SNPStatistics:
    """Collects calibration statistics of every layer of `model` with forward hooks."""

    def __init__(self, model: nn.Module, criteria: dict[str, str], qk_rank: int = 4, seed: int = 0):
        self.model = model
        self.seed = seed  # with the layer and the image's index, seeds the query rows "attention_kl" samples
        self.adapter = get_adapter(model)
        if criteria.get("qk") in VALIDATED_QK:  # compared with magnitude: config.VALIDATED_SNP_QK (attention_kl)
            criteria = {**criteria, "qk": _config.VALIDATED_SNP_QK}
        self.criteria = criteria
        self.read_tokens = self.adapter.read_tokens()  # "attention_kl_cls"
        self.qk_rank = qk_rank
        self.num_images = 0
        self.layers = [_LayerStats(d) for d in self.adapter.layer_dims()]
        self.hidden_sum: torch.Tensor | None = None
        self._handles: list = []
        self._qk_only = False  # later passes of "attention_iterative" accumulate nothing else
        self._mask: torch.Tensor | None = None  # real (not padding) tokens of the current batch

    # ---- hooks ------------------------------------------------------------------------------------------
    def __enter__(self):
        for idx in range(len(self.layers)):
            mods = self.adapter.layer_modules(idx)
            stats = self.layers[idx]
            if "fc2" in mods:  # (an MLP block removed by block pruning has none)
                self._handles.append(mods["fc2"].register_forward_pre_hook(self._mlp_hook(idx, stats, mods)))
            if stats.dims.has_attention:
                self._handles += [
                    mods["q_proj"].register_forward_hook(self._keep("q", stats)),
                    mods["k_proj"].register_forward_hook(self._keep("k", stats)),
                ]
                if self.criteria["qk"] == "attention_output":
                    self._handles.append(mods["v_proj"].register_forward_hook(self._keep("v", stats)))
                self._handles += [
                    mods["o_proj"].register_forward_pre_hook(self._attention_hook(idx, stats, mods)),
                ]
        if self.criteria["hidden"] == "contribution":
            if not self.adapter.supports_hidden_pruning:
                raise ValueError(
                    f"{type(self.model).__name__} keeps its hidden channels (the width of its embeddings is part of its "
                    "interface); use criterion={'hidden': 'magnitude'} or leave the hidden ratio at 0."
                )
            self._handles += [
                module.register_forward_hook(self._hidden_hook(readers, where))
                for module, readers, where in self.adapter.hidden_readers()
            ]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for stats in self.layers:
            stats.q = stats.k = stats.v = stats.out_factor = None

    @staticmethod
    def _check_finite(tensor: torch.Tensor, where: str):
        # one reduction instead of an elementwise test: any NaN/inf makes the sum non-finite. Summed in float32 at
        # least: a float16 sum of finite activations overflows to inf past 65504
        if not torch.isfinite(tensor.sum(dtype=torch.promote_types(tensor.dtype, torch.float32))):
            raise ValueError(
                f"Non-finite activations (NaN/inf) at {where} during calibration. Check the model weights and the "
                "calibration images (e.g. a wrong dtype or an unnormalized image processor)."
            )

    def _keep(self, name, stats):
        def hook(module, inputs, output):
            setattr(stats, name, output.detach())

        return hook

    def _hidden_hook(self, readers: list[nn.Module], where: str):
        def hook(module, inputs, output):
            self._check_finite(output, where)
            output = self._masked(output.detach())
            energy = output.double().pow(2).sum(dim=(0, 1))  # sum over inputs and tokens
            if readers:
                energy = energy * sum(_col_sq_norms(r.weight).double() for r in readers)
            self.hidden_sum = energy if self.hidden_sum is None else self.hidden_sum + energy

        return hook

    def _mlp_hook(self, idx, stats, mods):
        def hook(module, inputs):
            if self._qk_only:
                return
            act = self._masked(inputs[0].detach())
            self._check_finite(act, f"layer {idx} MLP")
            if self.criteria["mlp"] not in ("magnitude", "random"):  # (data-free criteria read the weights alone)
                stats.add("mlp", act.float().pow(2).sum(1).sqrt().sum(0))  # sum over images of ||act_j|| over tokens

        return hook

    def _attention_hook(self, idx, stats, mods):
        def hook(module, inputs):
            d = stats.dims
            out = self._masked(inputs[0].detach().float())  # (B, N, H * d_v): column (h, i) is A_h v_i
            self._check_finite(out, f"layer {idx} attention")
            batch, tokens = out.shape[:2]
            if self.criteria["qk"] in (
                "attention",
                "attention_iterative",
                "attention_kl",
                "attention_kl_cls",
                "attention_output",
                "svd",
                "svd_centered",
                "qk_norm",
                "logits",
            ):
                self._qk_stats(
                    stats,
                    self.adapter.attention_scaling(idx),
                    batch,
                    tokens,
                    self.adapter.attention_bias(idx),
                    idx,
                    out_factor=self._out_factor(idx, stats, mods)
                    if self.criteria["qk"] == "attention_output"
                    else None,
                )
            stats.q = stats.k = stats.v = None
            if self._qk_only:
                return
            o = out.view(batch, tokens, d.num_heads, d.v_head_dim)
            v_crit = self.criteria["v"]
            if v_crit in ("contribution", "redundancy", "redundancy_only"):
                stats.add("v_norm", o.pow(2).sum(1).sqrt().sum(0))  # (H, d_v)
            if v_crit in ("redundancy", "redundancy_only"):
                flat = out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)
                stats.add("v_cos", torch.einsum("bti,btj->ij", flat, flat))
            if self.criteria["heads"] == "contribution":
                w = mods["o_proj"].weight.detach().float()
                scale = self.adapter.output_scale(idx, "o_proj")
                if scale is not None:
                    w = w * scale.detach().float()[:, None]
                w = w.view(-1, d.num_heads, d.v_head_dim)
                gram = torch.einsum("khi,khj->hij", w, w)  # W_h^T W_h per head
                energy = torch.einsum("bthi,hij,bthj->bh", o, gram, o).clamp_min(0).sqrt()
                stats.add("heads", energy.sum(0))

        return hook

    def _masked(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` (batch, tokens, ...) with the padding tokens' rows zeroed (they add nothing to the sums)."""
        if self._mask is None:
            return tensor
        return tensor * self._mask.view(*self._mask.shape, *([1] * (tensor.dim() - 2))).to(tensor.dtype)

    def _row_seeds(self, layer_idx: int, images: range) -> list[int]:
        """Per image (by its index in the calibration data, so that batching does not matter) and layer."""
        return [(self.seed * 1_000_003 + layer_idx) * 1_000_003 + i for i in images]

    def _out_factor(self, idx: int, stats: _LayerStats, mods: dict) -> torch.Tensor:
        """(H, d_v, d_v) per head a factor F with F F^T = W_o,h^T W_o,h (the output projection's metric on the head's
        value dims, rows scaled as the residual stream sees them): `V F` carries `W_o`'s norm into the statistic. The
        weights do not change during the pass: computed at the layer's first batch and kept."""
        if stats.out_factor is not None:
            return stats.out_factor
        d = stats.dims
        w = mods["o_proj"].weight.detach().float()
        scale = self.adapter.output_scale(idx, "o_proj")
        if scale is not None:
            w = w * scale.detach().float().to(w.device)[:, None]
        w = w.view(-1, d.num_heads, d.v_head_dim)
        gram = torch.einsum("khi,khj->hij", w, w).double()
        values, vectors = torch.linalg.eigh(gram)  # symmetric PSD: F = Q diag(sqrt(lambda))
        stats.out_factor = (vectors * values.clamp_min(0).sqrt()[:, None, :]).float()
        return stats.out_factor

    def _qk_stats(self, stats, scaling, batch, tokens, bias=None, layer_idx=0, out_factor=None):
        d = stats.dims
        q = stats.q.float().view(batch, tokens, d.num_heads, d.qk_head_dim).transpose(1, 2)  # (B, H, N, d)
        k = stats.k.float().view(batch, tokens, d.num_heads, d.qk_head_dim).transpose(1, 2)
        v = None
        if out_factor is not None:  # "attention_output": the values, times the output projection's factor
            v = stats.v.float().view(batch, tokens, d.num_heads, d.v_head_dim).transpose(1, 2)
            v = v @ out_factor.to(v.device)
        if bias is not None:
            bias = bias.detach().float().to(q.device)
        first = self.num_images  # index of the batch's first image (counted after the forward pass)
        if self._mask is None:
            seeds = self._row_seeds(layer_idx, range(first, first + batch))
            self._qk_stats_of(stats, scaling, q, k, bias, seeds, v)
            return
        # padded batch: each sequence on its real tokens alone, as if it had been run by itself
        for b in range(batch):
            real = self._mask[b]
            b_bias = bias[:, real][:, :, real] if bias is not None else None
            seeds = self._row_seeds(layer_idx, range(first + b, first + b + 1))
            b_v = v[b : b + 1, :, real] if v is not None else None
            self._qk_stats_of(stats, scaling, q[b : b + 1, :, real], k[b : b + 1, :, real], b_bias, seeds, b_v)

    def _qk_stats_of(self, stats, scaling, q, k, bias=None, row_seeds=None, v=None):
        crit = self.criteria["qk"]
        if crit == "qk_norm":
            stats.add("qk", (q.pow(2).sum(2).sqrt() * k.pow(2).sum(2).sqrt()).sum(0))
            return
        if crit == "attention":
            stats.add("qk", attention_change_scores(q, k, scaling, bias).sum(0))
        elif crit == "attention_iterative":
            kept = stats.qk_kept.to(q.device, q.dtype)[None, :, None, :]  # (1, H, 1, d)
            stats.add("qk", attention_change_scores(q * kept, k * kept, scaling, bias).sum(0))
        elif crit in ("attention_kl", "attention_kl_cls"):
            read = self.read_tokens if crit == "attention_kl_cls" else 0
            gram = attention_kl_gram(q, k, scaling, QUERY_SAMPLE, bias, row_seeds=row_seeds, read_tokens=read)
            stats.add("qk_gram", gram.sum(0))
        elif crit == "attention_output":
            gram = attention_output_gram(q, k, v, scaling, QUERY_SAMPLE, bias, row_seeds=row_seeds)
            stats.add("qk_gram", gram.sum(0))
        elif crit == "logits":
            kc = k - k.mean(-2, keepdim=True)  # softmax ignores a per-row constant: centre over keys
            gram = (q.transpose(-1, -2) @ q) * (kc.transpose(-1, -2) @ kc)  # (B, H, d, d)
            stats.add("qk_gram", (scaling**2) * gram.sum(0))
        else:
            stats.add("qk", svd_share_scores(q, k, scaling, self.qk_rank, centered=crit == "svd_centered").sum(0))

    # ---- calibration ------------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, batches: Iterable, show_progress: bool = True) -> SNPStatistics:
        from tqdm.auto import tqdm

        was_training = self.model.training
        self.model.eval()
        try:
            rounds = QK_ROUNDS if self.criteria["qk"] == "attention_iterative" else 1
            with self:
                for round_idx in range(rounds):
                    self._qk_only = round_idx > 0
                    desc = "SNP calibration" + (f" (pass {round_idx + 1}/{rounds})" if rounds > 1 else "")
                    for batch in tqdm(batches, desc=desc, unit="batch", disable=not show_progress):
                        self._mask = self.adapter.token_mask(batch)
                        inputs = self.adapter.model_inputs(batch)
                        self.model(**inputs)
                        if round_idx == 0:
                            self.num_images += len(inputs[self.adapter.main_input_name])
                    self._mask = None
                    if rounds > 1:
                        self._remove_weakest_pairs(round_idx, last=round_idx == rounds - 1)
        finally:
            self._qk_only = False
            self._mask = None
            self.model.train(was_training)
        if self.num_images == 0:
            raise ValueError("The calibration data yielded no samples; give a non-empty calibration dataset.")
        return self

    def _remove_weakest_pairs(self, round_idx: int, last: bool) -> None:
        """attention_iterative: after a pass, keep the strongest 1/2^(round+1) pairs of every head (all removed in
        the last pass) and turn the pass's scores into the final ones (see `_iterative_scores`)."""
        for stats in self.layers:
            score = stats.sums.pop("qk").double().cpu().view(stats.dims.num_heads, -1)
            dim = score.shape[1]
            keep = 0 if last else max(1, dim >> (round_idx + 1))
            for h in range(score.shape[0]):
                alive = stats.qk_kept[h].nonzero().flatten()
                order = alive[torch.argsort(score[h, alive], stable=True)]  # weakest first
                for i in order[: len(alive) - keep].tolist():
                    stats.qk_kept[h, i] = False
                    stats.qk_removed_at[h, i] = round_idx
                    stats.qk_removed_score[h, i] = score[h, i]

    @staticmethod
    def _iterative_scores(stats: _LayerStats, n: float) -> torch.Tensor:
        """Increasing along the removal order (pass, then score within the pass): sorting gives that order."""
        scores = torch.empty_like(stats.qk_removed_score)
        for h in range(scores.shape[0]):
            order = sorted(
                range(scores.shape[1]),
                key=lambda i: (int(stats.qk_removed_at[h, i]), float(stats.qk_removed_score[h, i])),
            )
            best = 0.0
            for i in order:
                best = max(float(stats.qk_removed_score[h, i]) / n, best + abs(best) * 1e-6 + 1e-30)
                scores[h, i] = best
        return scores

    # ---- scores -----------------------------------------------------------------------------------------
    def scores(self, seed: int = 0) -> GroupScores:
        """Scores of every group under the chosen criteria (data-free criteria computed from the weights)."""
        used = set(self.criteria.values())
        fallback = {}
        if "magnitude" in used:
            fallback["magnitude"] = scores_to_cpu(magnitude_scores(self.model))
        if "random" in used:
            fallback["random"] = random_scores(self.model, seed)
        n = float(self.num_images)
        # the sums were accumulated on the model's device (float64); scores live on the CPU, whatever that device
        for stats in self.layers:
            stats.sums = {name: value.cpu() for name, value in stats.sums.items()}
        if self.hidden_sum is not None:
            self.hidden_sum = self.hidden_sum.cpu()
        layers = []
        for idx, stats in enumerate(self.layers):
            d = stats.dims
            mods = self.adapter.layer_modules(idx)
            mlp_out = (
                _col_sq_norms(mods["fc2"].weight, self.adapter.output_scale(idx, "fc2")).sqrt().cpu()
                if "fc2" in mods
                else torch.zeros(0)
            )
            if not d.has_attention:  # only the MLP group
                mlp_crit = self.criteria["mlp"]
                if mlp_crit in fallback:
                    mlp = fallback[mlp_crit].layers[idx].mlp
                else:
                    mlp = (stats.sums["mlp"] / n).float() * mlp_out if "mlp" in stats.sums else torch.zeros(0)
                layers.append(LayerScores(heads=torch.zeros(0), qk=torch.zeros(0, 0), v=torch.zeros(0, 0), mlp=mlp))
                continue
            entry = {}
            for group, crit in self.criteria.items():
                if group == "hidden":
                    continue
                if crit in fallback:
                    entry[group] = getattr(fallback[crit].layers[idx], group)
            if "qk" not in entry and self.criteria["qk"] == "attention_iterative":
                entry["qk"] = self._iterative_scores(stats, n).float()
            if "qk" not in entry and "qk_gram" in stats.sums:
                entry["qk"] = greedy_removal_scores(stats.sums["qk_gram"] / n).float()
            if "qk" not in entry:
                entry["qk"] = (stats.sums["qk"] / n).float()
            v_crit = self.criteria["v"]
            similarity = None
            if "v" not in entry:
                out_norm = _col_sq_norms(mods["o_proj"].weight, self.adapter.output_scale(idx, "o_proj")).sqrt().cpu()
                out_norm = out_norm.view(d.num_heads, d.v_head_dim)
                contribution = (stats.sums["v_norm"] / n).float() * out_norm
                if v_crit == "contribution":
                    entry["v"] = contribution
                else:
                    similarity = (stats.sums["v_cos"] / n).float()
                    rho = _max_other_head_cos(similarity.abs(), d.num_heads, d.v_head_dim)
                    entry["v"] = (1 - rho) * (contribution if v_crit == "redundancy" else 1.0)
                    entry["v_contribution"] = contribution if v_crit == "redundancy" else torch.ones_like(contribution)
            if "mlp" not in entry:
                entry["mlp"] = (stats.sums["mlp"] / n).float() * mlp_out if "mlp" in stats.sums else torch.zeros(0)
            if "heads" not in entry:
                entry["heads"] = (stats.sums["heads"] / n).float()
            layers.append(
                LayerScores(
                    heads=entry["heads"],
                    qk=entry["qk"].view(d.num_heads, d.qk_head_dim),
                    v=entry["v"].view(d.num_heads, d.v_head_dim),
                    mlp=entry["mlp"],
                    v_similarity=similarity,
                    v_contribution=entry.get("v_contribution"),
                )
            )
        crit = self.criteria["hidden"]
        hidden = fallback[crit].hidden if crit in fallback else (self.hidden_sum / n).sqrt().float()
        return GroupScores(hidden=hidden, layers=layers)


def _probs(q: torch.Tensor, k: torch.Tensor, scaling: float, bias: torch.Tensor | None) -> torch.Tensor:
    """softmax(s Q K^T + bias): the attention probabilities (bias: (H, N, N) or None)."""
    logits = scaling * q @ k.transpose(-1, -2)
    return (logits if bias is None else logits + bias).softmax(-1)


def _query_rows(q: torch.Tensor, bias: torch.Tensor | None, max_queries: int | None, row_seeds: list[int] | None):
    """(q, bias, scale) restricted to `max_queries` query rows per image (all of them when there are fewer): drawn at
    random, image b's from `row_seeds[b]`, else evenly spaced; `scale` = N / rows scales the sums up to all rows."""
    batch, heads, tokens, dim = q.shape
    if max_queries is None or tokens <= max_queries:
        return q, bias, 1.0
    if row_seeds is None:
        rows = torch.linspace(0, tokens - 1, max_queries).round().long().expand(batch, max_queries)
    else:
        rows = torch.stack(
            [
                torch.randperm(tokens, generator=torch.Generator().manual_seed(seed))[:max_queries].sort().values
                for seed in row_seeds
            ]
        )
    rows = rows.to(q.device)
    q = q.gather(2, rows[:, None, :, None].expand(batch, heads, max_queries, dim))
    bias = bias[:, rows].transpose(0, 1) if bias is not None else None  # (B, H, T, N)
    return q, bias, tokens / max_queries


def attention_kl_gram(
    q: torch.Tensor,
    k: torch.Tensor,
    scaling: float,
    max_queries: int | None = None,
    bias: torch.Tensor | None = None,
    row_seeds: list[int] | None = None,
    read_tokens: int = 0,
):
    """M_ij = s^2 sum_t q_i[t] q_j[t] Cov_{A_t}(k_i, k_j) per head: 1_R^T M 1_R is twice the second-order KL of the
    attention rows when the pairs R are removed. q, k: (B, H, N, d); `bias` (H, N, N) is added to the logits. With
    `max_queries`, a subset of that many query rows per image (scaled up to all N): drawn at random, image b's from
    `row_seeds[b]` (an unbiased estimate of the sum over all rows), else evenly spaced. With `read_tokens` = r > 0,
    the first r rows (those a classifier reads) are added again, all of them, times N / r: together they weigh as
    much as all rows. Returns (B, H, d, d)."""
    if read_tokens:
        read = attention_kl_gram(
            q[:, :, :read_tokens], k, scaling, bias=None if bias is None else bias[:, :read_tokens]
        )
        rows = attention_kl_gram(q, k, scaling, max_queries, bias, row_seeds)
        return rows + read * (q.shape[2] / read_tokens)
    q, bias, scale = _query_rows(q, bias, max_queries, row_seeds)
    probs = _probs(q, k, scaling, bias)  # (B, H, T, N)
    mean_k = probs @ k  # (B, H, T, d): E_{A_t}[k]
    # sum_{t,u} A_tu z_tu z_tu^T with z_tu = q_t * k_u: one (T*N, d) Gram matrix per head, a head of an image at a
    # time (a few MB that stay in cache: 2.3x faster than a whole image's heads at once on DeiT-B)
    second = torch.empty(*q.shape[:2], q.shape[-1], q.shape[-1], dtype=q.dtype, device=q.device)
    root = probs.sqrt()
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            z = (root[b, h][..., None] * k[b, h][None]).mul_(q[b, h][:, None, :])  # (T, N, d)
            z = z.reshape(-1, z.shape[-1])
            second[b, h] = z.T @ z
    qm = q * mean_k
    first = qm.transpose(-1, -2) @ qm
    return (scaling**2) * scale * (second - first)


def attention_output_gram(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scaling: float,
    max_queries: int | None = None,
    bias: torch.Tensor | None = None,
    row_seeds: list[int] | None = None,
):
    """M_ij = s^2 sum_t q_i[t] q_j[t] <U_t[:, i], U_t[:, j]> per head, U_t = V^T diag(A_t) (K - 1 <A_t, K>): 1_R^T M 1_R
    is the squared first-order change of the attention output (rows t, summed) when the pairs R are removed. q, k:
    (B, H, N, d); v: (B, H, N, d_v) (times a factor of the output projection's metric, for the block's output);
    `bias`, `max_queries` and `row_seeds` as for `attention_kl_gram`. Returns (B, H, d, d)."""
    q, bias, scale = _query_rows(q, bias, max_queries, row_seeds)
    probs = _probs(q, k, scaling, bias)  # (B, H, T, N)
    mean_k = probs @ k  # (B, H, T, d): <A_t, K>
    mean_v = probs @ v  # (B, H, T, d_v): V^T A_t
    gram = torch.empty(*q.shape[:2], q.shape[-1], q.shape[-1], dtype=q.dtype, device=q.device)
    for b in range(q.shape[0]):  # a head of an image at a time, as for attention_kl_gram
        for h in range(q.shape[1]):
            # U_t = V^T diag(A_t) K - (V^T A_t) <A_t, K>^T: (T, d_v, d)
            u = (probs[b, h][:, None, :] * v[b, h].T[None]) @ k[b, h]
            u -= mean_v[b, h][:, :, None] * mean_k[b, h][:, None, :]
            u.mul_(q[b, h][:, None, :])  # column i times q_i[t]
            u = u.reshape(-1, u.shape[-1])
            gram[b, h] = u.T @ u
    return (scaling**2) * scale * gram


def greedy_removal_scores(gram: torch.Tensor) -> torch.Tensor:
    """Scores from greedy backward elimination on the quadratic error E(R) = 1_R^T G 1_R, per head.

    gram: (H, d, d), symmetric positive semi-definite. Repeatedly removes the unit whose removal raises E least;
    its score is that increase, made non-decreasing along the removal order (so sorting the scores gives the
    removal order, and the k smallest scores of a head are the k units the greedy removes first). Returns (H, d).
    """
    gram = gram.detach().double().cpu()
    heads, dim = gram.shape[:2]
    scores = torch.empty(heads, dim, dtype=torch.float64)
    for h in range(heads):
        g = gram[h]
        removed = torch.zeros(dim, dtype=torch.bool)
        cross = torch.zeros(dim, dtype=torch.float64)  # sum over removed j of G[i, j]
        best_so_far = 0.0
        for _ in range(dim):
            increase = (g.diagonal() + 2 * cross).masked_fill(removed, float("inf"))
            victim = int(torch.argmin(increase))
            # strictly increasing along the order, so that ties cannot reorder units
            best_so_far = max(float(increase[victim]), best_so_far + abs(best_so_far) * 1e-6 + 1e-30)
            scores[h, victim] = best_so_far
            removed[victim] = True
            cross += g[:, victim]
    return scores


def attention_change_scores(
    q: torch.Tensor, k: torch.Tensor, scaling: float, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """||dA||^2 per query/key pair: the first-order change of the attention probabilities when pair i is removed.

    q, k: (..., N, d). With A = softmax(s Q K^T), removing pair i changes row t of the logits by -s q_i[t] k_i, so
    dA_t = -s q_i[t] A_t * (k_i - <A_t, k_i>) and ||dA||^2 = s^2 sum_t q_i[t]^2 (A_t^2 @ k_i^2 - 2 m A_t^2 @ k_i +
    m^2 sum_u A_tu^2) with m = <A_t, k_i>: three N x N x d matmuls per head; `bias` (H, N, N) is added to the logits
    (it does not depend on the pairs). Returns (..., d).
    """
    probs = _probs(q, k, scaling, bias)
    mean_k = probs @ k
    probs.square_()
    dim = k.shape[-1]
    p2k = probs @ torch.cat([k.square(), k], dim=-1)  # one matmul for A^2 @ k^2 and A^2 @ k
    change = p2k[..., :dim] - 2 * mean_k * p2k[..., dim:] + mean_k.square() * probs.sum(-1, keepdim=True)
    return (scaling**2) * (q.square() * change.clamp_min(0)).sum(-2)


def svd_share_scores(q: torch.Tensor, k: torch.Tensor, scaling: float, rank: int, centered: bool = False):
    """The paper's criterion: sum_{j<=rank} |c_ij|, c_ij = s (u_j . q_i)(k_i . v_j), over the top singular triplets
    of S = s Q K^T (row-centred logits S - mean_u S when `centered`). q, k: (..., N, d). Returns (..., d).
    Note sum_i c_ij = sigma_j exactly."""
    if centered:
        k = k - k.mean(-2, keepdim=True)
    logits = scaling * q @ k.transpose(-1, -2)
    rank = min(rank, logits.shape[-1])
    u, _, vh = torch.linalg.svd(logits.double(), full_matrices=False)
    u, v = u[..., :rank].to(q.dtype), vh[..., :rank, :].transpose(-1, -2).to(q.dtype)
    share = scaling * (u.transpose(-1, -2) @ q) * (v.transpose(-1, -2) @ k)  # (..., r, d)
    return share.abs().sum(-2)


def other_head_cos(abs_cos: torch.Tensor, dim: int) -> torch.Tensor:
    """|cos| between filters of different heads (same-head pairs set to 0). abs_cos: (H*d, H*d)."""
    head_of = torch.arange(abs_cos.shape[0], device=abs_cos.device) // dim
    return abs_cos.masked_fill(head_of[:, None] == head_of[None, :], 0.0)


def _max_other_head_cos(abs_cos: torch.Tensor, heads: int, dim: int) -> torch.Tensor:
    """rho of every filter: max |cos| with a filter of another head. Returns (H, d)."""
    return other_head_cos(abs_cos, dim).max(1).values.view(heads, dim)


def scores_to_cpu(scores: GroupScores) -> GroupScores:
    """`scores` with every tensor on the CPU, as float32 (scores of a model on a GPU are computed there; allocation
    and planning mix them with CPU tensors)."""

    def cpu(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return tensor.detach().float().cpu() if tensor is not None else None

    layers = [
        LayerScores(
            heads=cpu(ls.heads),
            qk=cpu(ls.qk),
            v=cpu(ls.v),
            mlp=cpu(ls.mlp),
            v_similarity=cpu(ls.v_similarity),
            v_contribution=cpu(ls.v_contribution),
        )
        for ls in scores.layers
    ]
    return GroupScores(hidden=cpu(scores.hidden), layers=layers)


def snp_scores(
    model: nn.Module, batches, criteria: dict[str, str], qk_rank: int = 4, seed: int = 0, show_progress: bool = True
) -> GroupScores:
    """Scores of `model` under `criteria` (group -> criterion name), calibrating on `batches` if needed."""
    data_free = all(c in ("magnitude", "random") for c in criteria.values())
    stats = SNPStatistics(model, criteria, qk_rank, seed=seed)
    if not data_free:
        stats.run(batches, show_progress=show_progress)
    else:
        stats.num_images = 1
    return stats.scores(seed)
