"""refit_target='residual': the least-squares refit matches `proj(x) + residual` (the sum the branch writes into the
residual stream) to the unpruned model's, for pre-norm ViT/DeiT and post-norm text encoders."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel

from optimum_snp import PruningPlan, SNPConfig, SNPPruner, apply_plan, get_adapter
from optimum_snp.reconstruction import TargetCache, reconstruct

from .conftest import pixel_values, random_plan, tiny_model
from .text_utils import encode, sentences, text_dataset, tiny_text_model, word_tokenizer


KINDS = ["vit", "deit-teacher", "bert", "distilbert"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return word_tokenizer(tmp_path_factory.mktemp("tok"))


def _model(kind, seed=0):
    if kind == "bert":
        return tiny_text_model(BertModel, BertConfig, seed=seed)
    if kind == "distilbert":
        config = dict(dim=32, n_layers=2, n_heads=4, hidden_dim=48, max_position_embeddings=64)
        return tiny_text_model(DistilBertModel, DistilBertConfig, seed=seed, **config)
    return tiny_model(kind, seed=seed)


def _batches(kind, tokenizer, seed=10):
    if kind in ("bert", "distilbert"):
        return [encode(tokenizer, sentences(5, seed=seed + i)) for i in range(3)]
    return [pixel_values(4, seed=seed + i) for i in range(3)]


def _sums(model, batches, idx, key, hidden=None):
    """The sum `key`'s output + residual in layer `idx` (rows of real tokens), read where the adapter says."""
    adapter = get_adapter(model)
    where = adapter.residual_sums[key]
    point = adapter.layer(idx) if where == "output" else adapter.layer_modules(idx)[where]
    rows = []

    def hook(module, args, out=None):
        value = args[0] if out is None else (out[0] if isinstance(out, tuple) else out)
        rows.append(value.detach())

    handle = point.register_forward_hook(hook) if where == "output" else point.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for batch in batches:
                model(**adapter.model_inputs(batch))
    finally:
        handle.remove()
    out = []
    for value, batch in zip(rows, batches, strict=True):
        mask = adapter.token_mask(batch)
        value = value[..., hidden] if hidden is not None else value
        out.append(value[mask] if mask is not None else value.flatten(0, 1))
    return torch.cat(out)


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_pruned_the_residual_refit_returns_the_original_weights(kind, tokenizer):
    model = _model(kind)
    adapter = get_adapter(model)
    plan = PruningPlan.identity(adapter.hidden_size, adapter.layer_dims())
    pruned = apply_plan(model, plan)
    report = reconstruct(model, pruned, plan, _batches(kind, tokenizer), refit_target="residual", show_progress=False)
    assert report["refit_target"] == "residual"
    original = model.state_dict()
    for name, tensor in pruned.state_dict().items():
        assert torch.allclose(tensor, original[name], atol=2e-4, rtol=1e-4), name


@pytest.mark.parametrize("kind", KINDS)
def test_the_residual_refit_matches_the_sum_better_than_the_output_refit(kind, tokenizer):
    model = _model(kind, seed=1)
    plan = random_plan(model, seed=3, hidden=kind == "vit").normalized()
    batches = _batches(kind, tokenizer)
    hidden = torch.as_tensor(plan.hidden) if len(plan.hidden) < get_adapter(model).hidden_size else None
    fits = {}
    ridge = get_adapter(model).fallback_ridge  # a fixed ridge (text: not the cross-validated default), same for both
    for target in ("output", "residual"):
        pruned = apply_plan(model, plan)
        report = reconstruct(model, pruned, plan, batches, refit_target=target, ridge=ridge, show_progress=False)
        fits[target] = (pruned, report)
    # layer 0: o_proj's residual (the layer's input) is the same in both models, so both targets give the same
    # refit; fc2 then sees the same inputs under both, and its residual carries what the o_proj refit left: there
    # the residual refit minimises the sum's error (with the ridge), and reports the error measured directly
    for key in ("o_proj", "fc2"):
        reference = _sums(model, batches, 0, key, hidden)
        errors = {
            target: float((_sums(pruned, batches, 0, key) - reference).pow(2).sum(-1).mean())
            for target, (pruned, _) in fits.items()
        }
        reported = fits["residual"][1]["layers"][0][key]["mse_after"]
        assert reported == pytest.approx(errors["residual"], rel=1e-3, abs=1e-6), key
        if key == "o_proj":
            assert errors["residual"] == pytest.approx(errors["output"], rel=1e-5)
        else:
            assert errors["residual"] < errors["output"]
    # every refit lowers the sum's error it fits
    for layer in fits["residual"][1]["layers"]:
        for key in ("o_proj", "fc2"):
            assert layer[key]["mse_after"] <= layer[key]["mse_before"] + 1e-9, (layer["layer"], key)
    # the last layer's output (the sum after fc2) ends closer to the unpruned model's than with the output target
    last = get_adapter(model).num_layers - 1
    reference = _sums(model, batches, last, "fc2", hidden)
    final = {t: float((_sums(p, batches, last, "fc2") - reference).pow(2).mean()) for t, (p, _) in fits.items()}
    assert final["residual"] < final["output"]


def test_the_target_cache_records_the_sums_and_gives_the_same_refit(tokenizer):
    model = _model("vit", seed=2)
    plan = random_plan(model, seed=2)
    batches = _batches("vit", tokenizer)
    direct = apply_plan(model, plan)
    expected = reconstruct(model, direct, plan, batches, refit_target="residual", show_progress=False)
    cache = TargetCache(model, len(batches), refit_target="residual").fill(batches)
    cached = apply_plan(model, plan)
    report = reconstruct(model, cached, plan, batches, refit_target="residual", cache=cache, show_progress=False)
    assert report["layers"] == expected["layers"]
    for (name, a), b in zip(direct.state_dict().items(), cached.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # a cache of the other target is refused, nothing is changed
    before = {k: v.clone() for k, v in cached.state_dict().items()}
    with pytest.raises(ValueError, match="refit_target='residual' targets but refit_target='output'"):
        reconstruct(model, cached, plan, batches, refit_target="output", cache=cache, show_progress=False)
    assert all(torch.equal(v, cached.state_dict()[k]) for k, v in before.items())


def test_pruner_passes_the_refit_target_and_bad_values_are_refused(tokenizer):
    with pytest.raises(ValueError, match="Unknown `refit_target` 'sum'"):
        SNPConfig(refit_target="sum")
    model = tiny_text_model(BertModel, BertConfig, seed=0)
    pruner = SNPPruner(model, tokenizer=tokenizer)
    config = SNPConfig(mlp_ratio=0.5, v_ratio=0.25, refit_target="residual", num_calibration_samples=16)
    pruner.prune(config, calibration_dataset=text_dataset(16), show_progress=False)
    assert pruner.report["reconstruction"]["refit_target"] == "residual"
    plan = PruningPlan.identity(32, get_adapter(model).layer_dims())
    with pytest.raises(ValueError, match="refit_target"):
        reconstruct(model, apply_plan(model, plan), plan, [encode(tokenizer, ["the cat"])], refit_target="x")


def test_cross_validated_ridge_picks_the_lowest_held_out_error_per_projection(tokenizer):
    from optimum_snp.config import RIDGE_GRID
    from optimum_snp.reconstruction import ProjectionStats

    # the choice: fitted on the other folds, the ridge with the lowest error on each held-out fold, summed
    torch.manual_seed(0)
    x = torch.randn(4, 30, 12)
    y = x @ torch.randn(12, 5) + 0.5 * torch.randn(4, 30, 5)
    stats = ProjectionStats.empty(12, 5, folds=4)
    for xb, yb in zip(x, y, strict=True):
        stats.add(xb, yb)
    weight, bias = torch.zeros(5, 12), torch.zeros(5)
    chosen, errors = stats.cv_ridge(weight, bias)
    assert set(errors) == set(RIDGE_GRID) and chosen == min(errors, key=errors.get)
    for ridge in (RIDGE_GRID[0], RIDGE_GRID[-1]):  # each fold fitted on the other three batches
        total = 0.0
        for k in range(4):
            train = torch.cat([x[i] for i in range(4) if i != k])
            train_y = torch.cat([y[i] for i in range(4) if i != k])
            direct = ProjectionStats.empty(12, 5)
            direct.add(train, train_y)
            w, b = direct.solve(weight, bias, ridge)
            total += float((x[k] @ w.float().T + b.float() - y[k]).pow(2).sum())
        assert errors[ridge] == pytest.approx(total / 120, rel=1e-4)
    # through reconstruct: every projection reports the ridge it used, one of the grid
    model = _model("bert", seed=1)
    plan = random_plan(model, seed=3)
    pruned = apply_plan(model, plan)
    report = reconstruct(model, pruned, plan, _batches("bert", tokenizer), ridge="cv", show_progress=False)
    assert report["ridge"] == "cv"
    for layer in report["layers"]:
        for key in ("o_proj", "fc2"):
            assert layer[key]["ridge"] in RIDGE_GRID
            assert layer[key]["mse_after"] <= layer[key]["mse_before"] + 1e-9
    # too few batches to cross-validate: a clear error
    with pytest.raises(ValueError, match="ridge='cv' needs calibration data in at least 2 batches"):
        reconstruct(model, apply_plan(model, plan), plan, _batches("bert", tokenizer)[:1], ridge="cv")
    assert SNPConfig(ridge="cv").ridge == "cv"
    with pytest.raises(ValueError, match="or 'cv'"):
        SNPConfig(ridge="auto")


def test_text_default_ridge_is_cross_validated_with_a_fixed_fallback(tokenizer):
    from optimum_snp.config import RIDGE_GRID

    model = _model("bert", seed=1)
    plan = random_plan(model, seed=3)
    adapter = get_adapter(model)
    assert adapter.default_ridge == "cv" and adapter.fallback_ridge == 0.3
    batches = _batches("bert", tokenizer)
    # ridge=None: the architecture's default, cross-validated; the same refit as ridge='cv' asked for explicitly
    default = apply_plan(model, plan)
    report = reconstruct(model, default, plan, batches, show_progress=False)
    assert report["ridge"] == "cv" and all(layer["fc2"]["ridge"] in RIDGE_GRID for layer in report["layers"])
    explicit = apply_plan(model, plan)
    reconstruct(model, explicit, plan, batches, ridge="cv", show_progress=False)
    for a, b in zip(default.state_dict().values(), explicit.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # a single batch: nothing to cross-validate on, the fixed fallback (no error, unlike an explicit ridge='cv')
    single = apply_plan(model, plan)
    report = reconstruct(model, single, plan, batches[:1], show_progress=False)
    assert report["ridge"] == 0.3
    fixed = apply_plan(model, plan)
    reconstruct(model, fixed, plan, batches[:1], ridge=0.3, show_progress=False)
    for a, b in zip(single.state_dict().values(), fixed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # ViT/DeiT keep their fixed default
    vit = tiny_model("vit")
    assert get_adapter(vit).default_ridge == 1e-3


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("target", ["output", "residual"])
def test_replayed_attention_gives_the_same_refit_and_computes_the_projections_once(
    kind, target, tokenizer, monkeypatch
):
    """After o_proj's refit, the passes for the projections after it replay the attention from o_proj's recorded
    inputs: the same weights bit for bit as computing the attention again, with q_proj run once per batch."""
    model = _model(kind, seed=3)
    plan = random_plan(model, seed=3)
    batches = _batches(kind, tokenizer)
    replayed = apply_plan(model, plan)
    adapter = get_adapter(replayed)
    queries = {adapter.layer_modules(idx)["q_proj"]: idx for idx in range(adapter.num_layers)}
    calls = [0] * adapter.num_layers
    forward = torch.nn.Linear.forward

    def counting(module, x):
        if module in queries:
            calls[queries[module]] += 1
        return forward(module, x)

    monkeypatch.setattr(torch.nn.Linear, "forward", counting)
    reconstruct(model, replayed, plan, batches, refit_target=target, show_progress=False)
    assert calls == [len(batches)] * adapter.num_layers
    monkeypatch.setattr(type(adapter), "attention_only_through_o_proj", False)
    calls[:] = [0] * adapter.num_layers
    again = apply_plan(model, plan)
    queries = {get_adapter(again).layer_modules(idx)["q_proj"]: idx for idx in range(adapter.num_layers)}
    reconstruct(model, again, plan, batches, refit_target=target, show_progress=False)
    assert min(calls) >= 2 * len(batches)  # without the replay, the attention runs again after o_proj's refit
    for name, tensor in again.state_dict().items():
        assert torch.equal(tensor, replayed.state_dict()[name]), name
