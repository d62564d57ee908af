"""Latency models (latency_model.py) and latency targets (`SNPConfig.target_latency`): monotone estimates, the on-disk
cache and its key, config validation, and pruning a tiny ViT to a latency target end to end."""

from __future__ import annotations

import json
import os

import pytest
import torch

from optimum_snp import SNPConfig, SNPPruner, model_size_of
from optimum_snp import latency_model as lm_module
from optimum_snp.embedded import digits_dataset
from optimum_snp.latency_model import LatencyModel, cache_dir, measure_latency
from optimum_snp.layer_dims import LayerDims

from .conftest import tiny_model


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty latency cache for the test (`$OPTIMUM_SNP_CACHE`)."""
    monkeypatch.setenv("OPTIMUM_SNP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "latency"


def _fake_seconds(name: str) -> float:
    """Deterministic stand-in timings: attention ~ heads x (qk + v), MLP ~ width, the whole model a bit more."""
    kind, *numbers = name.split("/")
    if kind == "att":
        h, q, v = map(int, numbers)
        return 1e-5 * (1 + h * (q + v))
    if kind == "mlp":
        return 1e-6 * (10 + int(numbers[0]))
    if kind == "ref":
        h, q, v, m = map(int, numbers)
        return 1e-5 * (1 + h * (q + v)) + 1e-6 * (10 + m)
    return 1e-2


@pytest.fixture
def counted(monkeypatch):
    """Replaces the timing function: counts its calls, returns deterministic timings (nothing is run)."""
    calls = []

    def measure(fns, runs=5, warmup=1, device=None, **kwargs):
        calls.append(len(fns))
        return {name: [_fake_seconds(name)] * runs for name in fns}

    monkeypatch.setattr(lm_module, "_measure", measure)
    return calls


def test_estimate_is_monotone_in_every_dim(cache):
    model = tiny_model("vit")
    latency = LatencyModel.build(model, runs=2)  # real (noisy) timings: the grid is made monotone
    full = LayerDims(4, 8, 8, 48)
    for field, top in (("num_heads", 4), ("qk_head_dim", 8), ("v_head_dim", 8), ("intermediate_size", 48)):
        values = []
        for n in range(1, top + 1):
            dims = {**full.to_dict(), field: n}
            values.append(latency.layer(LayerDims(**dims)))
        assert all(b >= a for a, b in zip(values, values[1:], strict=False)), (field, values)
    # a removed block costs nothing, the whole model is the fixed cost plus its layers
    assert latency.layer(LayerDims(0, 0, 0, 0)) == 0.0
    assert latency.estimate([full] * 3) == pytest.approx(latency.fixed_ms + 3 * latency.layer(full))
    assert latency.estimate([LayerDims(2, 4, 4, 24)] * 3) <= latency.estimate([full] * 3)


def test_cache_is_written_and_loaded_without_measuring(cache, counted):
    model = tiny_model("vit")
    first = LatencyModel.build(model, batch_size=2)
    assert len(counted) == 1 and not first.loaded and first.build_seconds > 0
    files = os.listdir(cache)
    assert len(files) == 1 and first.path == os.path.join(cache, files[0]) == os.path.join(cache_dir(), files[0])
    saved = json.loads((cache / files[0]).read_text())
    assert saved["key"]["batch_size"] == 2 and saved["key"]["device"] and saved["key"]["torch"] == torch.__version__
    assert {"dtype", "threads", "hidden_size", "tokens", "heads", "head_dim", "mlp"} <= set(saved["key"])
    second = LatencyModel.build(model, batch_size=2)
    assert len(counted) == 1 and second.loaded  # loaded, not measured
    assert second.estimate([LayerDims(3, 5, 6, 30)] * 3) == first.estimate([LayerDims(3, 5, 6, 30)] * 3)


def test_other_threads_or_batch_size_rebuild(cache, counted):
    model = tiny_model("vit")
    base = LatencyModel.build(model, batch_size=1, num_threads=1)
    other_batch = LatencyModel.build(model, batch_size=3, num_threads=1)
    other_threads = LatencyModel.build(model, batch_size=1, num_threads=2)
    assert len(counted) == 3 and len(os.listdir(cache)) == 3
    assert base.key["threads"] == 1 and other_threads.key["threads"] == 2 and other_batch.key["batch_size"] == 3
    assert LatencyModel.build(model, batch_size=1, num_threads=1).loaded and len(counted) == 3
    # another architecture (MLP width) is another key too
    LatencyModel.build(tiny_model("vit", intermediate_size=40), batch_size=1, num_threads=1)
    assert len(counted) == 4


def test_unsupported_family_raises(cache):
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48))
    with pytest.raises(NotImplementedError, match="ViT/DeiT"):
        LatencyModel.build(bert.eval())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target_latency=0.5, target_macs_ratio=0.5), "not both"),
        (dict(target_latency=0.5, target_macs=1e6), "not both"),
        (dict(target_latency=0.0), "target_latency"),
        (dict(target_latency=-3.0), "target_latency"),
        (dict(target_latency="fast"), "target_latency"),
        (dict(target_latency=True), "target_latency"),
        (dict(target_latency=0.5, latency_batch_size=0), "latency_batch_size"),
        (dict(target_latency=0.5, qk_ratio=0.3), "allocated automatically"),
    ],
)
def test_target_latency_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SNPConfig(**kwargs)


def test_target_latency_config_round_trips():
    config = SNPConfig(target_latency=12.5, latency_batch_size=4)
    assert config.has_target and SNPConfig.from_dict(config.to_dict()) == config


@pytest.fixture
def flop_timed(monkeypatch):
    """Replaces the timing function by a deterministic one: each call 'takes' its FLOPs at 1e11 FLOP/s (what a
    machine shared with other jobs cannot give: the pipeline's logic is tested, not this machine's timer)."""
    from torch.utils.flop_counter import FlopCounterMode

    def measure(fns, runs=5, warmup=1, device=None, **kwargs):
        seconds = {}
        for name, fn in fns.items():
            with FlopCounterMode(display=False) as counter:
                fn()
            seconds[name] = [counter.get_total_flops() * 1e-11] * runs
        return seconds

    monkeypatch.setattr(lm_module, "_measure", measure)


def test_prune_to_latency_target_end_to_end(cache, tmp_path, flop_timed):
    # at batch 16, with half the heads removed: a model this small spends much of its time in per-module overhead
    # that no dim removes (the floor of query/key, value and MLP pruning alone is about 0.6 of its latency)
    model = tiny_model("vit", hidden_size=64, intermediate_size=256, image_size=64, num_attention_heads=4)
    pruner = SNPPruner.from_pretrained(model)
    config = SNPConfig(
        target_latency=0.6,
        latency_batch_size=16,
        head_ratio=0.5,
        criterion="magnitude",
        reconstruct="none",
        allocation="scores",
    )
    pruned = pruner.prune(config, save_dir=tmp_path / "pruned", show_progress=False)
    report = pruner.report["latency"]
    saved = json.loads((tmp_path / "pruned" / "pruning_report.json").read_text())
    assert saved["latency"]["rounds"] == report["rounds"]
    assert SNPConfig.from_pretrained(tmp_path / "pruned") == config
    assert report["target"] == 0.6 and report["batch_size"] == 16
    for name in ("target_ms", "unpruned_ms", "estimate_ms", "measured_ms", "build_seconds", "rounds", "error"):
        assert report[name] is not None, name
    assert 1 <= report["rounds"] <= 3 and len(report["round_details"]) == report["rounds"]
    assert report["estimate_ms"] < report["unpruned_estimate_ms"] and report["measured_ms"] > 0
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    assert os.path.isfile(report["cache_file"])


@pytest.mark.parametrize("pipeline", ["sliced", "validated+refit", "sensitivity", "the calibrated dims"])
def test_a_returned_model_that_misses_the_latency_target_is_re_allocated(cache, flop_timed, monkeypatch, pipeline):
    """The rounds calibrate the internal target on one allocation; the held-out choice may return another. Simulated
    here: every model measured after the rounds runs 15% slower than its FLOPs, and the rounds' dims are forgotten, as
    if the choice were an allocation slower per estimated ms. The returned model is measured again, and when it misses,
    its allocation is re-allocated at a moved target, only the closest is kept, and the report shows those rounds.
    With the dims the rounds measured ("the calibrated dims"), the miss is measurement noise: nothing re-allocated."""
    from optimum_snp import pruner as pruner_module

    calibrated = {"done": False}
    calibrate = SNPPruner._calibrate_latency

    def calibrate_then_slow_down(self, *args, **kwargs):
        calibrate(self, *args, **kwargs)
        calibrated["done"] = True
        if pipeline != "the calibrated dims":
            self._latency["measured_dims"] = None  # as if another allocation than the measured one were chosen

    def measure(models, **kwargs):
        out = measure_latency(models, **kwargs)
        return {k: v * 1.15 if calibrated["done"] and k == "pruned" else v for k, v in out.items()}

    curves = []  # every sensitivity curve computed, by (layer, group)

    def sensitivity_curve(values, full):
        curves.append(sorted(values))
        return curve(values, full)

    curve = pruner_module.sensitivity_curve
    monkeypatch.setattr(SNPPruner, "_calibrate_latency", calibrate_then_slow_down)
    monkeypatch.setattr(pruner_module, "measure_latency", measure)
    monkeypatch.setattr(pruner_module, "sensitivity_curve", sensitivity_curve)
    model = tiny_model("vit", hidden_size=64, intermediate_size=256, image_size=64, num_attention_heads=4)
    pruner = SNPPruner.from_pretrained(model)
    common = dict(target_latency=0.8, latency_batch_size=4)
    if pipeline in ("validated+refit", "sensitivity"):  # validated query/key, least squares; the allocation
        allocation = "sensitivity" if pipeline == "sensitivity" else "validated"
        config = SNPConfig(
            num_calibration_samples=16, num_validation_samples=16, batch_size=8, allocation=allocation, **common
        )
        data = digits_dataset()["train"].select(range(40))
        pruned = pruner.prune(config, calibration_dataset=data, show_progress=False)
    else:
        config = SNPConfig(criterion="magnitude", reconstruct="none", allocation="uniform", **common)
        pruned = pruner.prune(config, show_progress=False)
    report = pruner.report["latency"]
    settle = report["settle_rounds"]
    chosen = pruner.report["allocation"]["chosen"]
    calibration_error = min(abs(r["error"]) for r in report["round_details"])
    assert settle[0]["allocation"] == chosen and settle[0]["error"] > 0.15 - calibration_error - 0.03
    assert report["estimate_ms"] == pytest.approx(
        LatencyModel.load(report["cache_file"]).estimate(get_dims(pruned)), abs=1e-3
    )
    if pipeline == "the calibrated dims":
        assert len(settle) == 1 and report["error"] == pytest.approx(settle[0]["error"], abs=1e-4)
        return
    assert 2 <= len(settle) <= 1 + pruner_module.MAX_SETTLE_ROUNDS
    assert settle[1]["internal_target_ms"] < settle[0]["internal_target_ms"]  # too slow: a smaller target
    # the returned model is the closest of the settle rounds, and the report describes it
    assert abs(report["error"]) == pytest.approx(min(abs(r["error"]) for r in settle), abs=1e-4)
    assert abs(report["error"]) < settle[0]["error"]
    assert report["internal_target_ms"] == pytest.approx(
        next(r for r in settle if r["error"] == pytest.approx(report["error"], abs=1e-4))["internal_target_ms"]
    )
    if pipeline == "sensitivity":  # the curves were measured once, for the first round: the others reuse them
        assert curves and len(curves) == len(pruner.report["allocation"]["sensitivity"])
    if pipeline == "validated+refit":  # the re-allocated candidate was refit like the others, and is listed with them
        assert [c["allocation"] for c in pruner.report["allocation"]["candidates"]].count(chosen) >= 2
        assert pruner.report["reconstruction"]["mode"] == "least_squares"
        assert pruner.report["macs"]["after"] == model_size_of(pruned).macs


def get_dims(model):
    from optimum_snp import get_adapter

    return get_adapter(model).layer_dims()


@pytest.mark.parametrize("blocks", [False, True])
def test_allocation_with_a_macs_layer_cost_matches_the_macs_path(blocks):
    """`layer_cost` generalizes the MACs count: given the MACs themselves, allocation gives the same dims."""
    from optimum_snp import get_adapter
    from optimum_snp.accounting import architecture_of, layer_size_in, model_size
    from optimum_snp.allocation import allocate_dims, uniform_dims
    from optimum_snp.scoring import magnitude_scores

    model = tiny_model("deit", hidden_size=64, num_attention_heads=8, intermediate_size=128, image_size=48)
    adapter = get_adapter(model)
    dims, d, arch = adapter.layer_dims(), adapter.hidden_size, architecture_of(model)
    total = model_size(model.config, arch, hidden_size=d, layer_dims=dims).macs
    fixed = total - sum(layer_size_in(model.config, i, x, d).macs for i, x in enumerate(dims))

    def macs(idx: int, layer: LayerDims) -> float:
        return layer_size_in(model.config, idx, layer, d).macs

    common = dict(config=model.config, architecture=arch, kept_hidden=d, base_dims=dims, round_to=1)
    scores = magnitude_scores(model)
    for keep in (0.6, 0.35):
        for exponent in (0.0, 0.25, 1.0):
            kw = dict(common, target_macs=keep * total, macs_exponent=exponent, allow_block_removal=blocks)
            assert allocate_dims(scores, layer_cost=macs, fixed_cost=fixed, **kw) == allocate_dims(scores, **kw)
        kw = dict(common, target_macs=keep * total)
        assert uniform_dims(layer_cost=macs, fixed_cost=fixed, **kw) == uniform_dims(**kw)
    with pytest.raises(ValueError, match="Latency target"):
        allocate_dims(scores, layer_cost=macs, fixed_cost=fixed, **dict(common, target_macs=0.01 * total))


def test_whole_model_measurements_take_more_rounds_when_calls_are_fast():
    import time

    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.004)

    lm_module._measure({"f": fn}, runs=3, warmup=1)
    assert len(calls) == 1 + 3  # warm-up + runs: the layer grid's measurements keep their rounds
    calls.clear()
    lm_module._measure({"f": fn}, runs=3, warmup=1, min_seconds=0.2)
    assert 1 + 10 <= len(calls) <= 1 + 50  # about 0.2 s / 4 ms rounds, at most MAX_RUNS
    assert lm_module.MIN_MEASURE_SECONDS > 0 and lm_module.MAX_RUNS == 100


def test_latency_relative_to_a_reference_cancels_a_drift_between_rounds(monkeypatch):
    """With `reference`, a model's latency is the reference's median times its median per-round ratio: on a machine
    whose speed drifts from round to round, with spikes that hit some calls only, that ratio stays exact where the
    ratio of the two medians does not."""
    drift = [1.0, 1.1, 1.2, 1.3, 1.4]  # the machine slows down over the rounds
    spike = [2.0, 2.0, 1.0, 1.0, 1.0]  # and two of the pruned model's calls are interrupted

    def measure(fns, runs=5, warmup=1, device=None, **kwargs):
        return {
            "original": [0.1 * d for d in drift],
            "pruned": [0.03 * d * s for d, s in zip(drift, spike, strict=True)],
        }

    monkeypatch.setattr(lm_module, "_measure", measure)
    model = tiny_model("vit")
    medians = measure_latency({"original": model, "pruned": model})
    paired = measure_latency({"original": model, "pruned": model}, reference="original")
    assert paired["original"] == pytest.approx(120.0) == medians["original"]
    assert paired["pruned"] == pytest.approx(0.3 * 120.0)  # every unspiked round's ratio is 0.3
    assert medians["pruned"] / medians["original"] == pytest.approx(0.35)  # 42 ms / 120 ms
    with pytest.raises(ValueError, match="reference='teacher'"):
        measure_latency({"original": model}, reference="teacher")


def test_next_internal_target_scales_then_follows_the_secant():
    from optimum_snp.pruner import _next_internal_target

    # measured = 1.3 * estimate - 270 (an affine device: an offset that scaling alone overshoots), target 410 ms
    def round_at(internal: float) -> dict:
        return {"internal_target_ms": internal, "error": (1.3 * internal - 270) / 410 - 1}

    first = round_at(406.0)
    assert _next_internal_target([first]) == pytest.approx(406.0 / (1 + first["error"]))
    second = round_at(_next_internal_target([first]))
    third = _next_internal_target([first, second])
    assert (1.3 * third - 270) / 410 - 1 == pytest.approx(0.0, abs=1e-9)  # the secant lands on the target
    # the two nearest rounds are used; a non-positive slope (noise) falls back to scaling the nearest round
    far = {"internal_target_ms": 900.0, "error": 2.0}
    assert _next_internal_target([far, first, second]) == pytest.approx(third)
    noisy = [{"internal_target_ms": 400.0, "error": 0.1}, {"internal_target_ms": 500.0, "error": -0.05}]
    assert _next_internal_target(noisy) == pytest.approx(500.0 / 0.95)
    # a nearly flat secant would jump far (here to 2100 ms): the scaled step instead
    flat = [{"internal_target_ms": 677.0, "error": -0.06}, {"internal_target_ms": 738.0, "error": -0.05}]
    assert _next_internal_target(flat) == pytest.approx(738.0 / 0.95)
