"""Reconstruction (SNP_METHOD section 6): the least-squares refit and bias compensation after the cut."""

import copy

import pytest
import torch

from optimum_snp import PruningPlan, SNPConfig, SNPPruner, apply_plan, get_adapter
from optimum_snp.reconstruction import ProjectionStats, reconstruct

from .conftest import logits_of, pixel_values, random_plan, tiny_model


KINDS = ["vit", "deit", "deit-teacher", "vit-base", "deit-base"]


def batches(n_batches=3, batch=4, seed=10):
    return [pixel_values(batch, seed=seed + i) for i in range(n_batches)]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_pruned_returns_original_weights(kind):
    model = tiny_model(kind, seed=0)
    adapter = get_adapter(model)
    plan = PruningPlan.identity(adapter.hidden_size, adapter.layer_dims())
    pruned = apply_plan(model, plan)
    report = reconstruct(model, pruned, plan, batches(), mode="least_squares", ridge=1e-3, show_progress=False)
    original = model.state_dict()
    for name, tensor in pruned.state_dict().items():
        assert torch.allclose(tensor, original[name], atol=2e-4, rtol=1e-4), name
    for layer in report["layers"]:
        assert layer["o_proj"]["mse_after"] <= 1e-4 and layer["fc2"]["mse_after"] <= 1e-4
    # bias compensation has nothing to fold in either
    pruned = apply_plan(model, plan)
    reconstruct(model, pruned, plan, batches(), mode="bias", show_progress=False)
    assert all(torch.equal(t, original[n]) for n, t in pruned.state_dict().items())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hidden", [False, True])
def test_refit_lowers_every_layers_output_error(kind, hidden):
    model = tiny_model(kind, seed=1)
    plan = random_plan(model, seed=1, hidden=hidden)
    pruned = apply_plan(model, plan)
    report = reconstruct(model, pruned, plan, batches(), mode="least_squares", ridge=1e-3, show_progress=False)
    assert len(report["layers"]) == model.config.num_hidden_layers
    for layer in report["layers"]:
        for key in ("o_proj", "fc2"):
            entry = layer[key]
            assert entry["mse_after"] <= entry["mse_before"] * (1 + 1e-9), (layer["layer"], key, entry)
    # and the final output moves towards the unpruned model's (held-out images)
    x = pixel_values(8, seed=99)
    reference, sliced = logits_of(model, x), logits_of(apply_plan(model, plan), x)
    refit = logits_of(pruned, x)
    if kind.endswith("base") and hidden:  # outputs of different widths: compare the kept channels
        reference = reference[..., plan.hidden]
    assert (refit - reference).pow(2).mean() < (sliced - reference).pow(2).mean()


def test_errors_measured_from_sums_match_direct_computation():
    torch.manual_seed(0)
    x, y = torch.randn(200, 6), torch.randn(200, 3)
    stats = ProjectionStats.empty(6, 3)
    for chunk_x, chunk_y in zip(x.split(64), y.split(64), strict=True):
        stats.add(chunk_x, chunk_y)
    weight, bias = torch.randn(3, 6), torch.randn(3)
    direct = (x @ weight.T + bias - y).pow(2).sum().item() / 200
    assert stats.error(weight, bias) == pytest.approx(direct, rel=1e-5)
    # ridge 0: the ordinary least-squares solution with intercept
    w, b = stats.solve(weight, bias, ridge=0.0)
    design = torch.cat([x, torch.ones(200, 1)], 1).double()
    expected = torch.linalg.lstsq(design, y.double()).solution
    assert torch.allclose(w.T, expected[:6], atol=1e-6) and torch.allclose(b, expected[6], atol=1e-6)


@pytest.mark.parametrize("width", [100, 300, 1100])
def test_blocked_gram_matches_the_product(width):
    # wide inputs are multiplied in column blocks, upper triangle only: the same sums as one product
    torch.manual_seed(0)
    x, y = torch.randn(300, width), torch.randn(300, 5)
    stats = ProjectionStats.empty(width, 5)
    for chunk_x, chunk_y in zip(x.split(128), y.split(128), strict=True):
        stats.add(chunk_x, chunk_y)
    exact = x.double().T @ x.double()
    assert torch.equal(stats.xtx, stats.xtx.T)
    assert torch.allclose(stats.xtx, exact, rtol=0, atol=1e-3)


@pytest.mark.parametrize("ridge", [0.0, 1e-3, 0.5])
@pytest.mark.parametrize("with_bias", [True, False])
def test_error_returned_by_the_solve_matches_the_error_from_sums(ridge, with_bias):
    torch.manual_seed(1)
    x = torch.randn(400, 12)
    y = x @ torch.randn(12, 4) + 0.3 * torch.randn(400, 4) + 1.0
    stats = ProjectionStats.empty(12, 4)
    stats.add(x, y)
    weight, bias = torch.randn(4, 12), torch.randn(4) if with_bias else None
    w, b, error = stats.solve(weight, bias, ridge, return_error=True)
    assert error == pytest.approx(stats.error(w, b), rel=1e-9, abs=1e-12)
    assert error < stats.error(weight, bias)


def test_statistics_memory_is_independent_of_the_image_count():
    model = tiny_model("vit", seed=2)
    plan = random_plan(model, seed=2)
    sizes = []
    for n_batches in (1, 4):
        pruned = apply_plan(model, plan)
        report = reconstruct(model, pruned, plan, batches(n_batches), show_progress=False)
        sizes.append(report["stats_bytes"])
        assert report["layers"][0]["o_proj"]["rows"] == n_batches * 4 * 17  # images x tokens
    assert sizes[0] == sizes[1] > 0


def test_same_seed_same_result():
    model = tiny_model("deit", seed=3)
    plan = random_plan(model, seed=3, hidden=True)
    results = []
    for _ in range(2):
        pruned = apply_plan(model, plan)
        reconstruct(model, pruned, plan, batches(), show_progress=False)
        results.append(_state(pruned))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_bias_compensation_matches_mean_of_removed_contribution():
    model = tiny_model("vit", seed=4)
    plan = random_plan(model, seed=4, heads=False, qk=False, v=False, mlp=True)
    pruned = apply_plan(model, plan)
    before = pruned.vit.layers[0].mlp.fc2.bias.clone()
    reconstruct(model, pruned, plan, batches(), mode="bias", show_progress=False)
    # the mean input of fc2 of layer 0 in the unpruned model
    inputs = []
    handle = model.vit.layers[0].mlp.fc2.register_forward_pre_hook(lambda m, i: inputs.append(i[0]))
    for b in batches():
        logits_of(model, b)
    handle.remove()
    mean = torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs]).double().mean(0)
    removed = [j for j in range(model.config.intermediate_size) if j not in plan.layers[0].mlp]
    expected = before.double() + model.vit.layers[0].mlp.fc2.weight.double()[:, removed] @ mean[removed]
    assert torch.allclose(pruned.vit.layers[0].mlp.fc2.bias.double(), expected, atol=1e-5)
    # the mean of the layer-0 MLP output is preserved (first layer: same inputs in both models)
    x = pixel_values(64, seed=5)

    def mlp_out(m):
        out = []
        h = m.vit.layers[0].mlp.register_forward_hook(lambda mod, i, o: out.append(o))
        logits_of(m, x)
        h.remove()
        return out[0].mean((0, 1))

    assert (mlp_out(pruned) - mlp_out(model)).abs().max() < (
        mlp_out(apply_plan(model, plan)) - mlp_out(model)
    ).abs().max()


def test_pruner_reconstructs_by_default_and_reports():
    model = tiny_model("vit", seed=5)
    from datasets import Dataset

    data = Dataset.from_dict({"pixel_values": [p.numpy() for p in pixel_values(12, seed=6)]})
    pruner = SNPPruner.from_pretrained(model)
    pruned = pruner.prune(SNPConfig(qk_ratio=0.5, v_ratio=0.5, mlp_ratio=0.5), data, show_progress=False)
    assert pruner.report["reconstruction"]["mode"] == "least_squares"
    assert "reconstruction" in pruner.report["seconds"]
    plain = apply_plan(model, pruner.plan)
    assert not torch.allclose(pruned.vit.layers[0].mlp.fc2.weight, plain.vit.layers[0].mlp.fc2.weight)
    none = pruner.prune(
        SNPConfig(qk_ratio=0.5, v_ratio=0.5, mlp_ratio=0.5, reconstruct="none"), data, show_progress=False
    )
    assert torch.equal(none.vit.layers[0].mlp.fc2.weight, plain.vit.layers[0].mlp.fc2.weight)


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="ridge"):
        SNPConfig(ridge=-1.0)
    with pytest.raises(ValueError, match="reconstruct"):
        SNPConfig(reconstruct="lsq")
    model = tiny_model("vit", seed=6)
    pruner = SNPPruner.from_pretrained(model)
    with pytest.raises(ValueError, match="reconstruct='least_squares'.*calibration"):
        pruner.prune(SNPConfig(criterion="magnitude", mlp_ratio=0.5), calibration_dataset=None, show_progress=False)
    # without reconstruction, magnitude needs no data
    pruner.prune(SNPConfig(criterion="magnitude", mlp_ratio=0.5, reconstruct="none"), show_progress=False)
    # ... but the validated allocation of a MACs target compares candidates on calibration images
    target = dict(criterion="magnitude", reconstruct="none", target_macs_ratio=0.6)
    with pytest.raises(ValueError, match="allocation='validated'.*calibration"):
        pruner.prune(SNPConfig(**target), show_progress=False)
    pruner.prune(SNPConfig(**target, allocation="scores"), show_progress=False)
    plan = random_plan(model, seed=6)
    pruned = apply_plan(model, plan)
    state = copy.deepcopy(pruned.state_dict())
    with pytest.raises(ValueError, match="calibration"):
        reconstruct(model, pruned, plan, [], show_progress=False)
    assert all(torch.equal(t, state[k]) for k, t in pruned.state_dict().items())  # nothing half-done


@pytest.mark.parametrize("kind", ["vit", "deit-teacher"])
def test_cached_targets_give_the_same_refit(kind):
    from optimum_snp.reconstruction import TargetCache

    model = tiny_model(kind, seed=7)
    plan = random_plan(model, seed=7, hidden=True)
    data = batches()
    plain = apply_plan(model, plan)
    reconstruct(model, plain, plan, data, show_progress=False)
    with TargetCache(model, num_batches=len(data)) as cache:
        for _ in range(2):  # a criterion with several passes: only the first is recorded
            for b in data:
                logits_of(model, b)
    assert cache.complete
    cached = apply_plan(model, plan)
    reconstruct(model, cached, plan, data, show_progress=False, cache=cache)
    for name, tensor in plain.state_dict().items():
        assert torch.allclose(tensor, cached.state_dict()[name], atol=1e-5), name
    # an empty cache fills itself with one pass
    empty = TargetCache(model, num_batches=len(data))
    again = apply_plan(model, plan)
    reconstruct(model, again, plan, data, show_progress=False, cache=empty)
    assert empty.complete and all(torch.equal(again.state_dict()[k], t) for k, t in cached.state_dict().items())


@pytest.mark.parametrize("kind", ["vit", "deit-teacher"])
def test_correcting_the_layer_output_equals_running_the_layer_again(kind, monkeypatch):
    from optimum_snp.adapters import ViTAdapter

    model = tiny_model(kind, seed=8)
    plan = random_plan(model, seed=8, hidden=True)
    fast = apply_plan(model, plan)
    reconstruct(model, fast, plan, batches(), show_progress=False)
    monkeypatch.setattr(ViTAdapter, "residual_output_targets", ())  # every layer run again after its refit
    slow = apply_plan(model, plan)
    reconstruct(model, slow, plan, batches(), show_progress=False)
    for name, tensor in slow.state_dict().items():
        assert torch.allclose(tensor, fast.state_dict()[name], atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("kind", ["vit", "deit-base"])
def test_query_key_alternatives_keep_per_layer_the_rows_with_the_lower_refit_error(kind):
    from dataclasses import replace

    from optimum_snp.reconstruction import chosen_plan

    model = tiny_model(kind, seed=8)
    plan = random_plan(model, seed=8, hidden=kind.endswith("base")).normalized()
    source = get_adapter(model).layer_dims()
    other = replace(
        plan,
        layers=[  # the same count of query/key dims per head, other dims
            replace(lp, qk=[sorted(range(d.qk_head_dim))[-len(q) :] for q in lp.qk]) if lp.heads else lp
            for lp, d in zip(plan.layers, source, strict=True)
        ],
    )
    alternatives = {"a": plan, "b": other}
    data = batches()
    pruned = apply_plan(model, plan)
    report = reconstruct(model, pruned, plan, data, show_progress=False, qk_alternatives=alternatives)
    final = chosen_plan(plan, alternatives, report)
    assert any("qk_criterion" in entry for entry in report["layers"])
    for idx, entry in enumerate(report["layers"]):
        if plan.layers[idx].qk == other.layers[idx].qk:
            assert "qk_criterion" not in entry
            continue
        errors = entry["qk_mse"]
        assert entry["qk_criterion"] == min(errors, key=errors.get)
        assert final.layers[idx].qk == alternatives[entry["qk_criterion"]].layers[idx].qk
    # the result is the refit of the chosen plan (its first layer's choice equals refitting with it alone)
    alone = apply_plan(model, final)
    reconstruct(model, alone, final, data, show_progress=False)
    for name, tensor in alone.state_dict().items():
        assert torch.allclose(tensor, pruned.state_dict()[name], atol=1e-5), name
    # alternatives that differ in more than the query/key rows, or without least squares: refused, nothing changed
    state = copy.deepcopy(pruned.state_dict())
    wrong = replace(plan, layers=[replace(plan.layers[0], mlp=plan.layers[0].mlp[:-1]), *plan.layers[1:]])
    with pytest.raises(ValueError, match="qk_alternatives\\['b'\\] differs"):
        reconstruct(model, pruned, plan, data, show_progress=False, qk_alternatives={"a": plan, "b": wrong})
    with pytest.raises(ValueError, match="least-squares"):
        reconstruct(model, pruned, plan, data, mode="bias", show_progress=False, qk_alternatives=alternatives)
    assert all(torch.equal(t, state[k]) for k, t in pruned.state_dict().items())
