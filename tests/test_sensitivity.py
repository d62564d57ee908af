"""allocation='sensitivity': per-(layer, group) loss curves measured on held-out calibration samples, and the greedy
that spends the MACs where they cost the least measured loss."""

from __future__ import annotations

import pytest
import torch

from optimum_snp import SNPConfig, SNPPruner, apply_plan, get_adapter, model_size_of
from optimum_snp.accounting import architecture_of
from optimum_snp.allocation import allocate_dims, sensitivity_curve
from optimum_snp.config import SENSITIVITY_LEVELS
from optimum_snp.plan import plan_from_kept_dims
from optimum_snp.reconstruction import reconstruct
from optimum_snp.scoring import magnitude_scores

from .conftest import pixel_values, random_plan, tiny_model
from .test_pruner import digits


def test_sensitivity_curve_interpolates_the_measured_points():
    curve = sensitivity_curve({2: 0.8, 4: 0.3, 6: 0.1}, full=8)
    assert curve(8) == 0.0 and curve(6) == pytest.approx(0.1) and curve(4) == pytest.approx(0.3)
    assert curve(7) == pytest.approx(0.05) and curve(5) == pytest.approx(0.2) and curve(3) == pytest.approx(0.55)
    assert curve(1) == pytest.approx(1.05)  # below the fewest kept units: along the last segment, never lower
    assert curve(0) >= curve(1) >= curve(2)


def test_loss_curves_make_the_greedy_cut_where_the_measured_loss_is_lowest():
    model = tiny_model("vit", hidden_size=64, num_attention_heads=8, intermediate_size=128, image_size=48)
    adapter = get_adapter(model)
    base = adapter.layer_dims()
    full = model_size_of(model).macs
    # every group is expensive to cut except layer 1's MLP, which costs nothing until half of it is gone
    curves = {}
    for idx, dims in enumerate(base):
        for group, size in (("qk", dims.qk_head_dim), ("v", dims.v_head_dim), ("mlp", dims.intermediate_size)):
            points = {size // 2: 0.0, 1: 5.0} if (idx, group) == (1, "mlp") else {1: 10.0}
            curves[idx, group] = sensitivity_curve(points, size)
    common = dict(
        config=model.config,
        architecture=architecture_of(model),
        kept_hidden=adapter.hidden_size,
        base_dims=base,
        max_ratio=0.9,
    )
    scores = magnitude_scores(model)
    saved_per_unit = full - model_size_of(apply_plan(model, plan_from_kept_dims(scores, 64, [
        base[0], base[1].__class__(base[1].num_heads, base[1].qk_head_dim, base[1].v_head_dim, 127), *base[2:]
    ]))).macs  # fmt: skip
    target = full - 40 * saved_per_unit  # 40 MLP units of one layer
    dims = allocate_dims(scores, target_macs=target, loss_curves=curves, **common)
    assert [d.intermediate_size for d in dims] == [128, 88, 128]
    assert [(d.qk_head_dim, d.v_head_dim) for d in dims] == [(b.qk_head_dim, b.v_head_dim) for b in base]


def test_refitting_only_some_layers_leaves_the_others_alone():
    model = tiny_model("vit", seed=3)
    plan = random_plan(model, seed=3)
    batches = [pixel_values(4, seed=20 + i) for i in range(3)]
    full = apply_plan(model, plan)
    reconstruct(model, full, plan, batches, show_progress=False)
    only = apply_plan(model, plan)
    sliced = {k: v.clone() for k, v in only.state_dict().items()}
    report = reconstruct(model, only, plan, batches, layers=[0], show_progress=False)
    assert [entry["layer"] for entry in report["layers"]] == [0]  # the layers after the last one are not run
    for name, tensor in only.state_dict().items():
        if ".layers.0." in name:  # the first layer sees the same inputs either way: the same refit
            torch.testing.assert_close(tensor, full.state_dict()[name])
        else:
            assert torch.equal(tensor, sliced[name]), name


def test_sensitivity_allocation_reaches_the_target_and_reports_its_curves():
    model = tiny_model("vit", hidden_size=64, num_attention_heads=8, intermediate_size=128, image_size=48)
    data = digits(40)
    config = SNPConfig(
        target_macs_ratio=0.5,
        allocation="sensitivity",
        num_calibration_samples=16,
        num_validation_samples=16,
        batch_size=8,
    )
    pruner = SNPPruner.from_pretrained(model)
    pruned = pruner.prune(config, calibration_dataset=data, show_progress=False)
    ratio = model_size_of(pruned).macs / model_size_of(model).macs
    assert 0.47 <= ratio <= 0.5
    allocation = pruner.report["allocation"]
    assert allocation["chosen"] == "sensitivity" and allocation["num_validation_samples"] == 16
    curves = allocation["sensitivity"]
    layers = model.config.num_hidden_layers
    assert sorted(curves) == sorted(f"{i}.{g}" for i in range(layers) for g in ("qk", "v", "mlp"))
    assert all(len(points) == len(SENSITIVITY_LEVELS) for points in curves.values())
    # cutting a quarter of an MLP's units hurts less than cutting three quarters
    assert all(curves[f"{i}.mlp"][32] > curves[f"{i}.mlp"][96] >= 0.0 for i in range(layers))


def test_sensitivity_cuts_are_measured_on_the_first_sensitivity_samples(monkeypatch):
    """sensitivity_samples=k: every cut's held-out pass runs on the first k held-out samples, and the curves are
    those of a prune whose held-out samples are those k alone; None measures on all of them."""
    import optimum_snp.pruner as pruner_module

    model = tiny_model("vit")
    data = digits(40)
    seen = []
    real = pruner_module.model_outputs
    monkeypatch.setattr(pruner_module, "model_outputs", lambda m, b: seen.append(sum(len(x) for x in b)) or real(m, b))

    def curves(**kw):
        seen.clear()
        config = SNPConfig(target_macs_ratio=0.5, allocation="sensitivity", num_calibration_samples=16, batch_size=4)
        pruner = SNPPruner.from_pretrained(model)
        pruner.prune(SNPConfig.from_dict({**config.to_dict(), **kw}), calibration_dataset=data, show_progress=False)
        return pruner.report["allocation"]["sensitivity"], list(seen)

    subset, sizes = curves(num_validation_samples=16, sensitivity_samples=8)
    assert sizes and set(sizes) == {8}  # the reference on the 8, then every cut on them
    everything, sizes = curves(num_validation_samples=16, sensitivity_samples=None)
    assert set(sizes) == {16} and subset != everything
    # the first 8 held-out samples are the first 8 of the 16 (same seed, same shuffle), so the subset's curves are
    # those of a prune that holds out those 8 alone
    alone, _ = curves(num_validation_samples=8, sensitivity_samples=None)
    for key, points in alone.items():
        assert points.keys() == subset[key].keys()
        for kept, value in points.items():
            assert subset[key][kept] == pytest.approx(value, rel=1e-4, abs=1e-7), (key, kept)
    for bad in (0, -2, True, 1.5):
        with pytest.raises(ValueError, match="sensitivity_samples"):
            SNPConfig(sensitivity_samples=bad)


def test_text_models_also_try_the_sensitivity_allocation_when_validating(tmp_path):
    from transformers import BertConfig, BertModel

    from .text_utils import text_dataset, tiny_text_model, word_tokenizer

    model = tiny_text_model(BertModel, BertConfig, seed=0)
    pruner = SNPPruner(model, tokenizer=word_tokenizer(tmp_path))
    config = SNPConfig(target_macs_ratio=0.6, num_calibration_samples=12, num_validation_samples=8, batch_size=4)
    pruner.prune(config, calibration_dataset=text_dataset(20), show_progress=False)
    allocation = pruner.report["allocation"]
    names = [c["allocation"] for c in allocation["candidates"]]
    assert "sensitivity" in names and names[0] == "uniform"
    assert allocation["chosen"] == min(allocation["candidates"], key=lambda c: c["divergence"])["allocation"]
    assert len(allocation["sensitivity"]) == 3 * model.config.num_hidden_layers
    assert pruner.report["reconstruction"]["refit_target"] == "residual"  # the text encoders' default
    # ViT/DeiT too (it won on their tune models); the config overrides the architecture's default
    assert get_adapter(tiny_model("vit")).sensitivity_candidate
    pruner.prune(
        SNPConfig.from_dict({**config.to_dict(), "sensitivity_candidate": False}),
        calibration_dataset=text_dataset(20),
        show_progress=False,
    )
    names = [c["allocation"] for c in pruner.report["allocation"]["candidates"]]
    assert "sensitivity" not in names and "sensitivity" not in pruner.report["allocation"]
    with pytest.raises(ValueError, match="sensitivity_candidate"):
        SNPConfig(target_macs_ratio=0.6, sensitivity_candidate="yes")


# ---- the shared-prefix measurement: every cut of layer i runs from layer i's cached inputs ------------------------
def _skip_cases(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification, DistilBertConfig, DistilBertModel

    from .test_efficientformer import images
    from .test_efficientformer import tiny as tiny_efficientformer
    from .text_utils import encode, tiny_text_model, word_tokenizer

    tokenizer = word_tokenizer(tmp_path)
    text = [encode(tokenizer, sentences) for sentences in (["the cat sat", "a dog ran far away now"], ["cat"] * 3)]
    pixels = [{"pixel_values": pixel_values(3, seed=s)} for s in (1, 2)]
    return [
        ("vit", tiny_model("vit"), pixels),
        ("deit-teacher", tiny_model("deit-teacher", seed=1), pixels),
        ("bert", tiny_text_model(BertForSequenceClassification, BertConfig, num_hidden_layers=3), text),
        ("distilbert", tiny_text_model(DistilBertModel, DistilBertConfig, n_layers=3, dim=32, hidden_dim=48), text),
        ("efficientformer", tiny_efficientformer(), [{"pixel_values": images(2, seed=s)} for s in (1, 2)]),
    ]


def test_skipped_layers_give_the_full_forward_pass_bit_for_bit(tmp_path):
    from optimum_snp.reconstruction import layer_inputs, next_layer_inputs, skipped_layers
    from optimum_snp.validation import model_outputs as _outputs

    for name, model, batches in _skip_cases(tmp_path):
        plan = random_plan(model, seed=4)
        pruned = apply_plan(model, plan)  # an SNP model, as the cuts are
        full, _ = _outputs(pruned, batches)
        inputs, like = layer_inputs(pruned, batches), None
        for idx in range(get_adapter(pruned).num_layers):
            with skipped_layers(pruned, idx, [h for h, _, _ in inputs], like):
                skipped, _ = _outputs(pruned, batches)
            assert len(skipped) == len(full), name
            for a, b in zip(skipped, full, strict=True):
                assert torch.equal(a, b), (name, idx)
            inputs, like = next_layer_inputs(pruned, idx, inputs)
        # the patched forwards are gone afterwards
        assert all("forward" not in vars(layer) for layer in get_adapter(pruned).layers()), name


def test_skipped_layers_are_only_real_when_their_cache_is_used():
    from optimum_snp.reconstruction import layer_inputs, next_layer_inputs, skipped_layers
    from optimum_snp.validation import model_outputs as _outputs

    model = tiny_model("vit")
    batches = [{"pixel_values": pixel_values(3, seed=1)}]
    inputs, like = next_layer_inputs(model, 0, layer_inputs(model, batches))
    wrong = [h + torch.randn_like(h) for h, _, _ in inputs]  # layer 1's input changed: so must the output
    with skipped_layers(model, 1, wrong, like):
        changed, _ = _outputs(model, batches)
    assert not torch.allclose(changed[0], _outputs(model, batches)[0][0])
    with skipped_layers(model, 1, [h for h, _, _ in inputs], like), pytest.raises(RuntimeError, match="more forward"):
        _outputs(model, batches * 2)


@pytest.mark.parametrize("kind", ["vit-heads", "bert", "vit-no-refit"])
def test_sensitivity_curves_equal_the_cuts_measured_from_the_model_input(kind, tmp_path, monkeypatch):
    """The shared-prefix curves (refit and held-out pass from layer i's cached inputs) equal, bit for bit, the same
    cuts refit and measured from the model's input (the previous implementation)."""
    import contextlib

    import optimum_snp.pruner as pruner_module

    if kind == "bert":
        from transformers import BertConfig, BertModel

        from .text_utils import text_dataset, tiny_text_model, word_tokenizer

        model = tiny_text_model(BertModel, BertConfig, num_hidden_layers=3)
        make = lambda: SNPPruner(model, tokenizer=word_tokenizer(tmp_path))  # noqa: E731
        data, extra = text_dataset(28), {}
    else:  # heads pruned by ratio: the cuts share the base model's head-pruned layers, not the original's (or no refit)
        model = tiny_model("vit", hidden_size=64, num_attention_heads=8, intermediate_size=128, image_size=48)
        make = lambda: SNPPruner.from_pretrained(model)  # noqa: E731
        data, extra = digits(40), {"head_ratio": 0.25} if kind == "vit-heads" else {"reconstruct": "none"}
    config = SNPConfig(
        target_macs_ratio=0.6,
        allocation="sensitivity",
        num_calibration_samples=16,
        num_validation_samples=8,
        batch_size=4,
        **extra,
    )
    pruner = make()
    pruner.prune(config, calibration_dataset=data, show_progress=False)
    shared = pruner.report["allocation"]["sensitivity"]

    original_reconstruct = pruner_module.reconstruct

    def from_the_input(*args, start=None, **kwargs):
        return original_reconstruct(*args, **kwargs)

    monkeypatch.setattr(pruner_module, "reconstruct", from_the_input)
    monkeypatch.setattr(pruner_module, "skipped_layers", lambda *a, **k: contextlib.nullcontext())
    reference = make()
    reference.prune(config, calibration_dataset=data, show_progress=False)
    assert shared == reference.report["allocation"]["sensitivity"]
    assert len(shared) == 3 * get_adapter(model).num_layers
