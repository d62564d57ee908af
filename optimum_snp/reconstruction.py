"""Reconstruction: refit the projections after the cut from the calibration images, no labels, no training.

The pipeline step between slice and save (SNP_METHOD section 6). Slicing keeps every surviving weight as it was,
so each layer's output drifts from the unpruned model's and the drift compounds over layers. Every layer has
projections that read a pruned group and write the residual stream (ViT/DeiT: `o_proj` reads the kept value
dims of the kept heads, `fc2` the kept MLP units); the adapter names them (`reconstruction_targets`). Modes:

- "least_squares": layer by layer, in order. `X` = the projection's input in the PRUNED model whose earlier
  projections are already refit, `Y` = the same projection's output in the UNPRUNED model on the same images,
  restricted to the kept hidden channels. Solve, in float64,

      min_{W, b} ||X W^T + b - Y||^2 + lam ||W - W_0||^2,    lam = ridge * mean(diag(X^T X))

  where `W_0` are the sliced weights: the ridge pulls towards the weights the model already has, so with
  nothing pruned the refit returns the original weights for any ridge. `X^T X`, `X^T Y` and the sums of X and Y
  are running sums over batches (products per batch in float32, sums in float64), so the statistics' memory is
  independent of the number of images. Each layer's input (both models) is cached once, so no layer is run
  from the model's input again; within a layer, the attention runs once: after `o_proj`'s refit, the passes for
  the projections after it take `o_proj`'s recorded inputs instead of computing the attention again.
- "bias": FLAP-style bias compensation, no solve: the mean (over the calibration images, in the unpruned model)
  of the removed units' contribution is folded into the projection's bias, b += W[:, removed] @ E[x_removed].
  One forward pass of the unpruned model.
- "none": off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch
from torch import nn

from .adapters import get_adapter
from .config import CV_FOLDS, RECONSTRUCT_MODES, REFIT_TARGETS, RIDGE_GRID, check_reconstruct
from .plan import PruningPlan
from .slicing import sliced_parameters


class _Stop(Exception):
    """Raised by a hook to end a forward pass early, once what it needs has been captured."""


@dataclass
class ProjectionStats:
    """Running sums for one projection `Y ~ X W^T + b` (X: (rows, k), Y: (rows, d)), float64."""

    xtx: torch.Tensor
    xty: torch.Tensor
    x_sum: torch.Tensor
    y_sum: torch.Tensor
    y_sq: torch.Tensor
    rows: int = 0
    # with cross-validation (ridge='cv'): the same sums per fold; batch i goes to fold i % len(folds)
    folds: list[ProjectionStats] | None = None
    batches: int = 0

    @classmethod
    def empty(cls, in_features: int, out_features: int, device=None, folds: int = 0) -> ProjectionStats:
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
        return cls(
            zeros(in_features, in_features),
            zeros(in_features, out_features),
            zeros(in_features),
            zeros(out_features),
            zeros(()),
            folds=[cls.empty(in_features, out_features, device) for _ in range(folds)] if folds > 1 else None,
        )

    def add(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Adds the rows of `x` / `y` (..., features); with `mask` (the leading dims, bool) only the rows it keeps
        (padding tokens carry no signal)."""
        if mask is not None:
            x, y = x[mask], y[mask]
        x = x.detach().reshape(-1, x.shape[-1]).float()
        y = y.detach().reshape(-1, y.shape[-1]).float()
        # float32 products (pairwise sums) per batch, float64 across batches
        sums = (
            _gram(x),
            (x.T @ y).double(),
            x.sum(0).double(),
            y.sum(0).double(),
            y.square().sum().double(),
        )
        targets = [self] + ([self.folds[self.batches % len(self.folds)]] if self.folds else [])
        for stats in targets:
            for total, value in zip((stats.xtx, stats.xty, stats.x_sum, stats.y_sum, stats.y_sq), sums, strict=True):
                total += value
            stats.rows += x.shape[0]
        self.batches += 1

    def without(self, fold: ProjectionStats) -> ProjectionStats:
        """The sums of every row but `fold`'s."""
        return ProjectionStats(
            self.xtx - fold.xtx,
            self.xty - fold.xty,
            self.x_sum - fold.x_sum,
            self.y_sum - fold.y_sum,
            self.y_sq - fold.y_sq,
            self.rows - fold.rows,
        )

    def cv_ridge(self, weight: torch.Tensor, bias: torch.Tensor | None, grid=RIDGE_GRID) -> tuple[float, dict]:
        """The ridge of `grid` with the lowest held-out error, summed over the folds (each fitted on the others), and
        every ridge's error per row. Needs `folds` with rows in at least two of them."""
        folds = [fold for fold in self.folds or [] if fold.rows]
        if len(folds) < 2:
            raise ValueError(
                f"ridge='cv' needs calibration data in at least 2 batches (got {self.batches}); use more calibration "
                "samples, a smaller batch_size, or a number for `ridge`."
            )
        rest = [self.without(fold) for fold in folds]  # each fold's complement, once for every ridge
        errors = {}
        for ridge in grid:
            total = 0.0
            for fold, others in zip(folds, rest, strict=True):
                w, b = others.solve(weight, bias, ridge)
                total += fold.error(w, b) * fold.rows
            errors[ridge] = total / self.rows
        return min(grid, key=errors.get), errors

    def nbytes(self) -> int:
        own = sum(t.numel() * t.element_size() for t in (self.xtx, self.xty, self.x_sum, self.y_sum, self.y_sq))
        return own + sum(fold.nbytes() for fold in self.folds or [])

    def error(self, weight: torch.Tensor, bias: torch.Tensor | None) -> float:
        """Mean squared error per row of `X W^T + b` against `Y`, from the sums alone."""
        w = weight.detach().double().to(self.xtx.device)
        b = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device) if bias is None else bias.detach().double()
        b = b.to(w.device)
        total = (
            (w @ self.xtx * w).sum()
            + 2 * b @ (w @ self.x_sum)
            + self.rows * b.square().sum()
            - 2 * (w * self.xty.T).sum()
            - 2 * b @ self.y_sum
            + self.y_sq
        )
        return float(total.clamp_min(0)) / max(self.rows, 1)

    def solve(
        self, weight: torch.Tensor, bias: torch.Tensor | None, ridge: float, return_error: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, float]:
        """Weight and bias of `min ||X W^T + b - Y||^2 + lam ||W - weight||^2`, lam = ridge * mean(diag(X^T X)), in
        float64 on the statistics' device (the caller casts them to the projection's dtype). With `return_error`,
        also the solution's `error()`, from the normal equations in O(k d) instead of O(k^2 d)."""
        k = self.xtx.shape[0]
        w0 = weight.detach().double().to(self.xtx.device)
        lam = ridge * float(self.xtx.diagonal().mean().clamp_min(1e-12))
        system = torch.zeros(k + 1, k + 1, dtype=torch.float64, device=self.xtx.device)
        system[:k, :k] = self.xtx
        system.diagonal()[:k] += lam  # X^T X + lam I, without a k x k identity
        system[:k, k] = system[k, :k] = self.x_sum
        system[k, k] = self.rows
        rhs = torch.cat([self.xty + lam * w0.T, self.y_sum[None, :]])
        if bias is None:  # no bias to fit: drop the last row and column
            system, rhs = system[:k, :k], rhs[:k]
        # [X 1]^T [X 1] + lam diag(I, 0) is positive definite for lam > 0: Cholesky (half the cost of LU)
        factor, info = torch.linalg.cholesky_ex(system)
        if int(info) == 0:
            solution = torch.cholesky_solve(rhs, factor)
        else:  # singular (ridge 0 and too few distinct rows): minimum-norm least squares (gelsd: CPU only)
            solution = torch.linalg.lstsq(system.cpu(), rhs.cpu(), driver="gelsd").solution.to(system.device)
        new_weight = solution[:k].T
        new_bias = solution[k] if bias is not None else None
        if not return_error:
            return new_weight, new_bias
        if int(info) != 0:  # the least-squares fallback: measured from the sums
            return new_weight, new_bias, self.error(new_weight, new_bias)
        # theta^T S0 theta = theta^T R0 + lam <W, w0 - W> (S0 theta = R0 + lam D (theta0 - theta)), so
        # ||[X 1] theta - Y||^2 = sum(Y^2) - <theta, R0> + lam <W, w0 - W>
        fitted = (new_weight.T * self.xty).sum() - lam * (new_weight * (w0 - new_weight)).sum()
        if new_bias is not None:
            fitted = fitted + new_bias @ self.y_sum
        return new_weight, new_bias, float((self.y_sq - fitted).clamp_min(0)) / max(self.rows, 1)


def _gram(x: torch.Tensor) -> torch.Tensor:
    """`x^T x` in float64 from float32 products. Wide inputs are split in column blocks and only the blocks on and
    above the diagonal are multiplied (the rest is their transpose): about 0.6x the time of one product at 1024+
    columns on 2 CPU cores (README, Pruning speed), the same sums up to float32 rounding."""
    k = x.shape[1]
    num_blocks = 4 if k >= 1024 else 2 if k >= 256 else 1
    if num_blocks == 1:
        return (x.T @ x).double()
    edges = [round(i * k / num_blocks) for i in range(num_blocks + 1)]
    gram = torch.empty(k, k, dtype=torch.float64, device=x.device)
    for i in range(num_blocks):
        rows = slice(edges[i], edges[i + 1])
        for j in range(i, num_blocks):
            cols = slice(edges[j], edges[j + 1])
            block = x[:, rows].T @ x[:, cols]
            gram[rows, cols] = block
            if j != i:
                gram[cols, rows] = block.T
    return gram


# ---- running layers one at a time ------------------------------------------------------------------------------
def _layer_inputs(model: nn.Module, adapter, batches) -> list[tuple[torch.Tensor, tuple, dict]]:
    """The (hidden_states, other args, kwargs) that layer 0 receives for every batch (the model stops there)."""
    cached = []

    def hook(module, args, kwargs):
        cached.append((args[0] if args else kwargs.pop("hidden_states"), tuple(args[1:]), dict(kwargs)))
        raise _Stop

    handle = adapter.layer(0).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            try:
                model(**adapter.model_inputs(batch))
            except _Stop:
                pass
    finally:
        handle.remove()
    return cached


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _run_layer(layer: nn.Module, hidden: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    return _first(layer(hidden, *args, **kwargs))


@torch.no_grad()
def layer_inputs(model: nn.Module, batches) -> list[tuple[torch.Tensor, tuple, dict]]:
    """What layer 0 of `model` receives for every batch: (hidden_states, other args, kwargs); only the model's
    embeddings run. With `next_layer_inputs`, the inputs of any later layer, one layer at a time."""
    return _layer_inputs(model, get_adapter(model), batches)


@torch.no_grad()
def next_layer_inputs(model: nn.Module, idx: int, inputs: list) -> tuple[list, object]:
    """(the inputs of layer `idx + 1` for every batch, given layer `idx`'s `inputs`; one raw output of the layer, the
    form `skipped_layers` returns)."""
    layer, outputs, raw = get_adapter(model).layer(idx), [], None
    for hidden, args, kwargs in inputs:
        raw = layer(hidden, *args, **kwargs)
        outputs.append((_first(raw), args, kwargs))
    return outputs, raw


def _like(raw, hidden: torch.Tensor):
    """`hidden` in the form of a layer's raw output `raw` (a tensor, or a tuple whose first item is the hidden state)."""
    if isinstance(raw, (tuple, list)):
        return type(raw)([hidden, *[None] * (len(raw) - 1)])
    return hidden


@contextlib.contextmanager
def skipped_layers(model: nn.Module, idx: int, hidden_states: list[torch.Tensor], like=None):
    """While active, a forward pass of `model` skips its layers before `idx`: at its i-th call, layer `idx - 1`
    returns `hidden_states[i]` (layer `idx`'s input for the i-th batch, e.g. from `next_layer_inputs`) and the layers
    before it return their input, computing nothing; the embeddings, layers `idx`... and the head run as usual. The
    adapter's layers are consecutive (each one's output is the next one's input), which the refit assumes too.
    `like`: a raw output of one of the model's layers (its form: a tensor or a tuple)."""
    if idx == 0:
        yield
        return
    adapter = get_adapter(model)
    calls = iter(hidden_states)

    def passthrough(hidden, *args, **kwargs):
        return _like(like, hidden)

    def replay(hidden, *args, **kwargs):
        try:
            return _like(like, next(calls))
        except StopIteration:
            raise RuntimeError(f"skipped_layers: more forward passes than the {len(hidden_states)} cached") from None

    layers = [adapter.layer(i) for i in range(idx)]
    for i, layer in enumerate(layers):
        layer.forward = replay if i == idx - 1 else passthrough  # the instance attribute shadows the class's forward
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def check_refit_target(refit_target: str | None, adapter) -> str:
    """The refit target to use (`SNPConfig.refit_target`; None: the architecture's default)."""
    if refit_target is None:
        return adapter.default_refit_target
    if refit_target not in REFIT_TARGETS:
        raise ValueError(f"Unknown `refit_target` {refit_target!r}; choose one of {list(REFIT_TARGETS)} or None.")
    return refit_target


def _sum_point(adapter, idx: int, key: str, refit_target: str):
    """Where layer `idx` of the adapter's model holds `key`'s output plus the residual it is added to (a module whose
    first input that is, or "output": the layer's output), for refit_target='residual'; None: the refit target is
    `key`'s own output."""
    if refit_target != "residual" or key not in adapter.residual_sums:
        return None
    where = adapter.residual_sums[key]
    return "output" if where == "output" else adapter.layer_modules(idx).get(where, "output")


def _record_target(adapter, idx: int, key: str, refit_target: str, hook):
    """Registers `hook(module, inputs[, output])` where the unpruned model's refit target of `key` appears."""
    point = _sum_point(adapter, idx, key, refit_target)
    if point is None:
        return adapter.layer_modules(idx)[key].register_forward_hook(hook)
    if point == "output":
        return adapter.layer(idx).register_forward_hook(hook)
    return point.register_forward_pre_hook(hook)


def _kept_inputs(plan: PruningPlan, idx: int, group: str, source_dims) -> list[int]:
    layer = plan.layers[idx]
    if group == "v":
        return layer.v_rows(source_dims[idx])
    if group == "mlp":
        return list(layer.mlp)
    raise ValueError(f"No reconstruction for group {group!r}.")


class TargetCache:
    """The unpruned model's outputs of every reconstruction target (all layers), per calibration batch, captured with
    forward hooks during a pass the caller runs anyway (the pruner's scoring pass), so the least-squares refit need
    not run the unpruned model again, however many candidate plans it refits. Only the first `num_batches` forward
    passes are recorded (criteria with several passes run the same batches again). Memory: layers x targets x
    images x tokens x hidden floats (DeiT-B, 64 images: about 0.9 GiB).

        with TargetCache(model, num_batches=len(batches)) as cache:
            ...  # run the model on `batches`
        reconstruct(model, pruned, plan, batches, cache=cache)
    """

    def __init__(self, model: nn.Module, num_batches: int, refit_target: str | None = None):
        self.adapter = get_adapter(model)
        self.model = model
        self.num_batches = num_batches
        self.refit_target = check_refit_target(refit_target, self.adapter)
        self.keys = [
            [key for key, _ in self.adapter.reconstruction_targets(idx)] for idx in range(self.adapter.num_layers)
        ]
        self.outputs = self._empty()
        self._handles = []

    def _empty(self) -> list[dict[str, list]]:
        return [{key: [] for key in keys} for keys in self.keys]

    @property
    def complete(self) -> bool:
        return all(len(per_key) == self.num_batches for layer in self.outputs for per_key in layer.values())

    def _record(self, idx: int, key: str):
        def hook(module, inputs, output=None):
            store = self.outputs[idx][key]
            if len(store) < self.num_batches:
                store.append((inputs[0] if output is None else _first(output)).detach())

        return hook

    def __enter__(self) -> TargetCache:
        for idx in range(self.adapter.num_layers):
            for key in self.keys[idx]:
                self._handles.append(_record_target(self.adapter, idx, key, self.refit_target, self._record(idx, key)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @torch.no_grad()
    def fill(self, batches: list) -> TargetCache:
        """Runs the model on `batches` if the cache is not complete yet (e.g. data-free criteria: no scoring pass)."""
        if self.complete:
            return self
        self.outputs = self._empty()
        was_training = self.model.training
        self.model.eval()
        try:
            with self:
                for batch in batches:
                    self.model(**self.adapter.model_inputs(batch))
        finally:
            self.model.train(was_training)
        return self


@torch.no_grad()
def reconstruct(
    original: nn.Module,
    pruned: nn.Module,
    plan: PruningPlan,
    batches: Iterable,
    mode: str = "least_squares",
    ridge: float | None = None,
    show_progress: bool = True,
    cache: TargetCache | None = None,
    qk_alternatives: dict[str, PruningPlan] | None = None,
    refit_target: str | None = None,
    layers: Iterable[int] | None = None,
    start: tuple[int, list] | None = None,
    capture: dict | None = None,
) -> dict:
    """Refits the projections of `pruned` (made from `original` by `plan`, in place) on the calibration `batches`.

    `ridge`: None = the architecture's default (`default_ridge` of its adapter).
    `refit_target` (least squares): 'output' fits each projection to the unpruned projection's output; 'residual'
    fits `proj(x) + residual` to the unpruned model's sum at the same place (the drift of the residual stream from
    earlier layers is absorbed too). None = the architecture's default (`default_refit_target`).
    `layers` (least squares): refit only these layers (the others keep their weights; the layers after the last
    of them are not run), e.g. to measure how one layer's cut can be repaired.
    `start` (least squares): (layer index, the pruned model's inputs of that layer for every batch, as
    `next_layer_inputs` gives them): the refit starts at that layer, the layers before it are neither run nor refit
    (e.g. cuts of one layer that share everything before it).
    `capture` (least squares, all layers): a dict that receives the refit model's last-layer output for every batch
    (`"hidden"`) and one raw layer output (`"like"`): with `skipped_layers(pruned, num_layers, ...)` the model's
    outputs on `batches` then cost only its embeddings and head.
    `cache`: the unpruned model's target outputs on the same `batches` (`TargetCache`); without it, the unpruned
    model is run again, layer by layer.
    `qk_alternatives`: plans that differ from `plan` only in the query/key dims each kept head keeps (e.g. chosen by
    two criteria), by name. Least squares only: in every layer, each alternative's query/key rows are put in the
    pruned layer, the first projection after the attention (`o_proj`) is refit, and the alternative with the lowest
    error after the refit is kept (the report names it per layer: `qk_criterion`). `pruned` then holds the chosen
    rows; `chosen_plan(plan, alternatives, report)` is the plan it matches.

    Returns a report: per layer and projection, the mean squared error of the projection's output against the
    unpruned model's before and after the refit (least squares), and the statistics' size in bytes.
    """
    check_reconstruct(mode, ridge)
    refit_target = check_refit_target(refit_target, get_adapter(pruned))
    if qk_alternatives and mode != "least_squares":
        raise ValueError(
            f"qk_alternatives are chosen by the least-squares refit's error; got reconstruct={mode!r}. Compare the "
            "alternatives on held-out data instead, or use reconstruct='least_squares'."
        )
    if mode == "none":
        return {"mode": "none"}
    batches = list(batches) if batches is not None else []
    if not batches:
        raise ValueError(
            f"reconstruct={mode!r} refits the pruned model on calibration data, but none was given: pass "
            "`calibration_dataset` (a few unlabeled images are enough), or use reconstruct='none'."
        )
    if ridge is None:
        ridge = default_ridge(get_adapter(pruned), len(batches))
    plan = plan.normalized()
    adapter_o, adapter_p = get_adapter(original), get_adapter(pruned)
    source_dims = adapter_o.layer_dims()
    # the kept hidden channels, or None when all are kept (then widths may also differ by stage, as in hybrids)
    hidden = torch.as_tensor(plan.hidden) if len(plan.hidden) < adapter_o.hidden_size else None
    was_training = (original.training, pruned.training)
    original.eval()
    pruned.eval()
    try:
        if mode == "bias":
            return _bias_compensation(original, pruned, plan, batches, adapter_o, adapter_p, source_dims, hidden)
        if cache is not None and len(batches) != cache.num_batches:
            raise ValueError(
                f"The target cache holds {cache.num_batches} batches but {len(batches)} were given; build it on the "
                "same calibration batches."
            )
        if cache is not None and cache.refit_target != refit_target:
            raise ValueError(
                f"The target cache holds refit_target={cache.refit_target!r} targets but refit_target={refit_target!r} "
                "was asked; build it with the same refit_target."
            )
        if qk_alternatives:
            alternatives = {name: alt.normalized() for name, alt in qk_alternatives.items()}
            for name, alt in alternatives.items():
                same = alt.hidden == plan.hidden and all(
                    (a.heads, a.v, a.mlp, len(a.qk[0]) if a.qk else 0)
                    == (b.heads, b.v, b.mlp, len(b.qk[0]) if b.qk else 0)
                    for a, b in zip(alt.layers, plan.layers, strict=True)
                )
                if not same:
                    raise ValueError(
                        f"qk_alternatives[{name!r}] differs from the plan in more than the query/key dims each head "
                        "keeps; build the alternatives from the same kept dims and scores except the query/key ones."
                    )
        else:
            alternatives = None
        return _least_squares(
            original,
            pruned,
            batches,
            adapter_o,
            adapter_p,
            hidden,
            ridge=ridge,
            show_progress=show_progress,
            cache=cache,
            alternatives=alternatives,
            refit_target=refit_target,
            only=None if layers is None else set(layers),
            start=start,
            capture=capture,
        )
    finally:
        original.train(was_training[0])
        pruned.train(was_training[1])


def _bias_compensation(original, pruned, plan, batches, adapter_o, adapter_p, source_dims, hidden) -> dict:
    sums: dict[tuple[int, str], list] = {}  # (layer, key) -> [sum of the projection's input rows, row count]
    current = {"mask": None}

    def record(where):
        def hook(module, inputs):
            x = inputs[0].detach()
            x = (x[current["mask"]] if current["mask"] is not None else x).double().reshape(-1, x.shape[-1])
            entry = sums.setdefault(where, [0.0, 0])
            entry[0] = entry[0] + x.sum(0)
            entry[1] += x.shape[0]

        return hook

    # the targets the pruned layer still has (a block removed whole has none)
    keys = [adapter_p.reconstruction_targets(idx) for idx in range(adapter_o.num_layers)]
    handles = [
        adapter_o.layer_modules(idx)[key].register_forward_pre_hook(record((idx, key)))
        for idx in range(adapter_o.num_layers)
        for key, _ in keys[idx]
    ]
    try:
        for batch in batches:
            current["mask"] = adapter_o.token_mask(batch)
            original(**adapter_o.model_inputs(batch))
    finally:
        for handle in handles:
            handle.remove()
    layers = []
    for idx in range(adapter_o.num_layers):
        mods_o, mods_p = adapter_o.layer_modules(idx), adapter_p.layer_modules(idx)
        entry = {"layer": idx}
        for key, group in keys[idx]:
            kept = set(_kept_inputs(plan, idx, group, source_dims))
            removed = torch.as_tensor([i for i in range(mods_o[key].in_features) if i not in kept], dtype=torch.long)
            proj_o, proj_p = mods_o[key], mods_p[key]
            if proj_p.bias is None or len(removed) == 0:
                entry[key] = {"removed": int(len(removed))}
                continue
            total, rows = sums[idx, key]
            weight = proj_o.weight.detach().double()
            weight = weight[hidden] if hidden is not None else weight
            shift = weight[:, removed] @ (total[removed] / rows)
            proj_p.bias.add_(shift.to(proj_p.bias.dtype))
            entry[key] = {"removed": int(len(removed)), "bias_shift_norm": float(shift.norm())}
        layers.append(entry)
    return {"mode": "bias", "layers": layers}


def _select(output: torch.Tensor, hidden: torch.Tensor | None) -> torch.Tensor:
    """`output` restricted to the kept hidden channels (no copy when every channel is kept: `hidden` None)."""
    if hidden is None:
        return output
    return output[..., hidden.to(output.device)]  # 2.4x faster than index_select on the last dim


def _unpruned_layer_pass(adapter, idx: int, keys: list, inputs: list, hidden: torch.Tensor, refit_target: str):
    """Runs an unpruned layer on every cached input; returns the next layer's inputs and, per projection key, its
    refit target (the projection's output, or with refit_target='residual' its sum with the residual) restricted to
    the kept hidden channels (one tensor per batch)."""
    layer = adapter.layer(idx)
    outputs: dict[str, list[torch.Tensor]] = {key: [] for key in keys}

    def record(key):
        def hook(module, inp, out=None):
            outputs[key].append(_select((inp[0] if out is None else _first(out)).detach(), hidden))

        return hook

    handles = [_record_target(adapter, idx, key, refit_target, record(key)) for key in keys]
    try:
        next_inputs = [(_run_layer(layer, h, a, kw), a, kw) for h, a, kw in inputs]
    finally:
        for handle in handles:
            handle.remove()
    return next_inputs, outputs


def _projection_stats(
    layer,
    proj: nn.Linear,
    inputs: list,
    targets: list[torch.Tensor],
    keep: bool = False,
    masks: list | None = None,
    sum_point=None,
    folds: int = 0,
    record: list | None = None,
) -> tuple[ProjectionStats, list]:
    """Statistics of `proj`'s input in the pruned `layer` against the targets. The layer runs up to `proj` only;
    with `keep` (for a projection whose output is simply added to the layer's output), it runs to the end with
    `proj`'s output replaced by zeros, and each batch's (proj input, layer output without proj) is returned too: the
    layer's output after the refit is that plus the refit `proj(input)`, with no second product by the old weights.

    With `sum_point` (refit_target='residual'; a module whose first input is `proj(x) + residual`, or "output": the
    layer's output), the targets are the unpruned model's sums there, and `proj` is fitted to the target minus the
    pruned layer's residual (read at the sum point while `proj` outputs zeros): the sum then matches the unpruned
    model's, so the refit also absorbs the drift from earlier layers.

    With `record` (a list), `proj`'s input of each batch is appended to it (for `_replayed_attention`)."""
    stats = ProjectionStats.empty(proj.in_features, proj.out_features, device=proj.weight.device, folds=folds)
    current = {"target": None, "input": None, "mask": None}

    def capture(inp, *args, **kwargs):
        current["input"] = inp.detach()
        if record is not None:
            record.append(current["input"])
        if sum_point is None:
            stats.add(inp, current["target"], current["mask"])
            if not keep:
                raise _Stop
        return inp.new_zeros(*inp.shape[:-1], proj.out_features)

    def at_sum(module, args):  # the sum point's input is the residual alone: proj's output is zero
        stats.add(current["input"], current["target"] - args[0], current["mask"])
        if not keep:
            raise _Stop

    kept = []
    proj.forward = capture  # the instance attribute shadows nn.Linear.forward while the layer runs
    handle = sum_point.register_forward_pre_hook(at_sum) if isinstance(sum_point, nn.Module) else None
    try:
        for (h, a, kw), target, mask in zip(inputs, targets, masks or [None] * len(inputs), strict=True):
            current["target"], current["mask"] = target, mask
            try:
                out = _run_layer(layer, h, a, kw)
            except _Stop:
                continue
            if sum_point == "output":
                stats.add(current["input"], target - out, mask)
                if not keep:
                    continue
            kept.append((current["input"], out))
    finally:
        del proj.forward
        if handle is not None:
            handle.remove()
    return stats, kept


@contextlib.contextmanager
def _replayed_attention(modules: dict[str, nn.Module], o_inputs: list[torch.Tensor] | None):
    """While active, each run of the layer (one per batch, in the order of `o_inputs`) computes `o_proj` on that
    batch's recorded input instead of the attention's: q_proj, k_proj and v_proj return zeros (their outputs reach
    the layer only through `o_proj`'s input; adapters where that fails set `attention_only_through_o_proj = False`),
    so the attention's projections are not computed again. `o_inputs` None: nothing replayed."""
    if o_inputs is None:
        yield
        return
    o_proj = modules["o_proj"]
    recorded = iter(o_inputs)

    def replay(x, *args, **kwargs):
        inp = next(recorded, None)
        if inp is None or inp.shape[:-1] != x.shape[:-1]:
            raise RuntimeError("the replayed attention ran on other batches than the ones its inputs were recorded on")
        return type(o_proj).forward(o_proj, inp)

    def zeros(module):
        return lambda x, *args, **kwargs: x.new_zeros(*x.shape[:-1], module.out_features)

    patched = [(o_proj, replay)] + [(modules[k], zeros(modules[k])) for k in ("q_proj", "k_proj", "v_proj")]
    for module, forward in patched:
        module.forward = forward  # the instance attribute shadows the class's forward
    try:
        yield
    finally:
        for module, _ in patched:
            del module.forward


def default_ridge(adapter, num_batches: int) -> float | str:
    """The ridge `SNPConfig(ridge=None)` means for `adapter`'s architecture: its `default_ridge`, or its
    `fallback_ridge` where that is "cv" and the calibration data is a single batch (nothing to cross-validate on)."""
    if adapter.default_ridge == "cv" and num_batches < 2:
        return adapter.fallback_ridge
    return adapter.default_ridge


def _refit(stats: ProjectionStats, proj: nn.Linear, ridge) -> tuple[torch.Tensor, torch.Tensor | None, float, float]:
    """(weight, bias, the ridge used, the error after the refit) of `proj`'s refit; ridge='cv' chooses the ridge by
    cross-validation over the folds."""
    if ridge == "cv":
        ridge, _ = stats.cv_ridge(proj.weight, proj.bias)
    weight, bias, error = stats.solve(proj.weight, proj.bias, ridge, return_error=True)
    return weight, bias, ridge, error


def _least_squares(
    original,
    pruned,
    batches,
    adapter_o,
    adapter_p,
    hidden,
    *,
    ridge,
    show_progress,
    cache=None,
    alternatives=None,
    refit_target="output",
    only=None,
    start=None,
    capture=None,
):
    from tqdm.auto import tqdm

    inputs_o = _layer_inputs(original, adapter_o, batches) if cache is None else None
    if cache is not None:
        cache.fill(batches)
    first, inputs_p = (0, _layer_inputs(pruned, adapter_p, batches)) if start is None else (start[0], list(start[1]))
    if len(inputs_p) != len(batches):
        raise ValueError(f"`start` holds the inputs of {len(inputs_p)} batches but {len(batches)} were given.")
    masks = [adapter_p.token_mask(batch) for batch in batches]
    folds = CV_FOLDS if ridge == "cv" else 0
    layers = []
    stats_bytes = 0
    progress = tqdm(range(adapter_o.num_layers), desc="SNP reconstruction", unit="layer", disable=not show_progress)
    for idx in progress:
        if only is not None and idx > max(only, default=-1):
            break
        if idx < first:  # before `start`: only the unpruned model advances (without a target cache)
            if cache is None:
                inputs_o, _ = _unpruned_layer_pass(adapter_o, idx, [], inputs_o, hidden, refit_target)
            layers.append({"layer": idx})
            continue
        layer_p, mods_p = adapter_p.layer(idx), adapter_p.layer_modules(idx)
        # the pruned layer's targets: a block removed whole (block pruning) has nothing left to refit
        keys = [key for key, _ in adapter_p.reconstruction_targets(idx)] if only is None or idx in only else []
        sums = {key: _sum_point(adapter_p, idx, key, refit_target) for key in keys}
        if cache is None:
            next_o, outputs = _unpruned_layer_pass(adapter_o, idx, keys, inputs_o, hidden, refit_target)
        else:
            next_o = None
            outputs = {k: [_select(o, hidden) for o in cache.outputs[idx][k]] for k in keys}
        entry = {"layer": idx}
        # o_proj's input per batch, recorded while it is refit: the passes after its refit replay the attention
        replays = adapter_p.attention_only_through_o_proj and keys[:1] == ["o_proj"]
        o_inputs = None
        chosen_stats = None
        if alternatives and keys and _differ_in_qk(alternatives, idx):
            chosen_stats, chosen_inputs = _choose_qk(
                original,
                pruned,
                adapter_o,
                alternatives,
                idx,
                layer_p=layer_p,
                proj=mods_p[keys[0]],
                inputs_p=inputs_p,
                targets=outputs[keys[0]],
                masks=masks,
                ridge=ridge,
                entry=entry,
                sum_point=sums[keys[0]],
                folds=folds,
            )
        next_p = None
        for key in keys:  # in forward order: each refit sees the refit projections before it
            proj = mods_p[key]
            # the last projection, when its output is simply added to the layer's output (pre-norm residual): run
            # the layer to the end once and correct its output after the refit, instead of running it again
            additive = key == keys[-1] and key in adapter_p.residual_output_targets
            targets = outputs.pop(key)
            record = [] if replays and key == "o_proj" and not additive else None
            if chosen_stats is not None and key == keys[0] and not additive:
                stats, kept = chosen_stats, []  # computed while choosing the query/key rows
                record = chosen_inputs if record is not None else None
            else:
                with _replayed_attention(mods_p, o_inputs):
                    stats, kept = _projection_stats(
                        layer_p,
                        proj,
                        inputs_p,
                        targets,
                        keep=additive,
                        masks=masks,
                        sum_point=sums[key],
                        folds=folds,
                        record=record,
                    )
            if record is not None:
                o_inputs = record
            before = stats.error(proj.weight, proj.bias)
            weight, bias, used, after = _refit(stats, proj, ridge)
            proj.weight.copy_(weight.to(proj.weight.dtype))
            if bias is not None:
                proj.bias.copy_(bias.to(proj.bias.dtype))
            entry[key] = {"mse_before": before, "mse_after": after, "rows": stats.rows}
            if ridge == "cv":
                entry[key]["ridge"] = used
            stats_bytes = max(stats_bytes, stats.nbytes())
            if additive:  # the layer's output without `proj`, plus the refit `proj`
                next_p = [(out + proj(x), a, kw) for (x, out), (_, a, kw) in zip(kept, inputs_p, strict=True)]
        layers.append(entry)
        if next_p is None:
            with _replayed_attention(mods_p, o_inputs):
                next_p = [(_run_layer(layer_p, h, a, kw), a, kw) for h, a, kw in inputs_p]
        del o_inputs
        last_inputs, inputs_p = inputs_p, next_p
        inputs_o = next_o
    if capture is not None and only is None:  # the refit model's last-layer outputs, for `skipped_layers`
        hidden, args, kwargs = last_inputs[0]
        capture.update(
            hidden=[h for h, _, _ in inputs_p], like=adapter_p.layer(adapter_p.num_layers - 1)(hidden, *args, **kwargs)
        )
    return {
        "mode": "least_squares",
        "ridge": ridge,
        "refit_target": refit_target,
        "layers": layers,
        "stats_bytes": stats_bytes,
    }


def _differ_in_qk(alternatives: dict[str, PruningPlan], idx: int) -> bool:
    return len({str(alt.layers[idx].qk) for alt in alternatives.values()}) > 1


def _choose_qk(
    original,
    pruned,
    adapter_o,
    alternatives,
    idx,
    *,
    layer_p,
    proj,
    inputs_p,
    targets,
    masks,
    ridge,
    entry,
    sum_point,
    folds,
):
    """Puts each alternative's query/key rows of layer `idx` in the pruned layer, refits `proj` (the attention's
    output projection) and keeps the rows with the lowest error after the refit; returns that refit's statistics
    and `proj`'s inputs (one per batch)."""
    names = [name for name, _ in adapter_o.layer_groups(idx)["qk"]]
    params = {name: pruned.get_parameter(name) for name in names}
    errors, best = {}, None
    for alt_name, alt in alternatives.items():
        tensors = sliced_parameters(original, alt, names)
        for name, tensor in tensors.items():
            params[name].copy_(tensor.to(params[name].dtype))
        record = []
        stats, _ = _projection_stats(
            layer_p, proj, inputs_p, targets, masks=masks, sum_point=sum_point, folds=folds, record=record
        )
        *_, errors[alt_name] = _refit(stats, proj, ridge)
        if best is None or errors[alt_name] < errors[best[0]]:
            best = (alt_name, stats, tensors, record)
    for name, tensor in best[2].items():  # the chosen rows back in the layer
        params[name].copy_(tensor.to(params[name].dtype))
    entry["qk_criterion"] = best[0]
    entry["qk_mse"] = errors
    return best[1], best[3]


def chosen_plan(plan: PruningPlan, alternatives: dict[str, PruningPlan], report: dict) -> PruningPlan:
    """The plan a refit with `qk_alternatives` leaves the pruned model in: each layer's query/key dims from the
    alternative the refit chose (`report["layers"][i]["qk_criterion"]`), the rest from `plan`."""
    alternatives = {name: alt.normalized() for name, alt in alternatives.items()}
    plan = plan.normalized()
    layers = []
    for idx, lp in enumerate(plan.layers):
        chosen = report["layers"][idx].get("qk_criterion") if idx < len(report.get("layers", [])) else None
        layers.append(replace(lp, qk=alternatives[chosen].layers[idx].qk) if chosen else lp)
    return replace(plan, layers=layers)


__all__ = [
    "RECONSTRUCT_MODES",
    "REFIT_TARGETS",
    "ProjectionStats",
    "TargetCache",
    "check_reconstruct",
    "check_refit_target",
    "chosen_plan",
    "layer_inputs",
    "next_layer_inputs",
    "reconstruct",
    "skipped_layers",
]
