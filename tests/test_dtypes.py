"""Half-precision models (bf16, fp16) through the whole pipeline on the CPU, statistics kept in float32/float64, the
SDPA padding rule of every device (the CUDA one exercised on the CPU), and clear errors for models that are not on
one real device.

The CUDA rules (padding, the fused query/key/value projection of inference) are exercised on the CPU too; the tests
marked `cuda` run on a GPU machine (`bash benchmarks/gpu_session.sh` runs them with the GPU benchmarks).
"""

from __future__ import annotations

import copy

import pytest
import torch

from optimum_snp import SNPConfig, SNPPruner, apply_plan, get_adapter
from optimum_snp.models import modeling_snp
from optimum_snp.models.modeling_snp import _sdpa_pad
from optimum_snp.reconstruction import ProjectionStats
from optimum_snp.scoring.snp import SNPStatistics

from .conftest import logits_of, pixel_values, random_plan, tiny_model


HALF = [torch.bfloat16, torch.float16]

# max |logit difference| / max |logit| between the half pipeline's pruned model and the float32 pipeline's (same
# weights cast to float32, same config), on 64 held-out digits. Measured on seeds 7 and 8, eager and SDPA, default
# config and allocation='scores': at most 0.035 (bf16) and 0.0035 (fp16), about what the UNPRUNED half model already
# differs by (0.021-0.027 and 0.003); the bounds below leave a factor of about 2.5.
LOGIT_TOLERANCE = {torch.bfloat16: 0.08, torch.float16: 0.01}


@pytest.fixture(scope="module")
def digits():
    from optimum_snp.embedded import digits_dataset

    return digits_dataset()["train"]


@pytest.fixture(scope="module")
def processor():
    from optimum_snp.embedded import digits_image_processor

    return digits_image_processor()


@pytest.fixture(scope="module")
def test_images(digits, processor):
    from optimum_snp.calibration import calibration_batches

    batches = calibration_batches(
        digits.select(range(200, 264)), processor, num_samples=64, batch_size=64, show_progress=False
    )
    return torch.cat(batches)


def _prune(model, digits, processor, **overrides):
    pruner = SNPPruner(model, image_processor=processor)
    # the default pipeline: default criteria (validated query/key criterion), least-squares refit, validated
    # allocation on 16 held-out images
    settings = dict(target_macs_ratio=0.5, num_calibration_samples=32, num_validation_samples=16)
    config = SNPConfig(**{**settings, **overrides})
    pruned = pruner.prune(config, calibration_dataset=digits.select(range(48)), show_progress=False)
    return pruner, pruned


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_half_model_prunes_like_float32(dtype, attn, digits, processor, test_images):
    model = tiny_model("vit", attn=attn, seed=7, num_labels=10).to(dtype)
    reference_model = copy.deepcopy(model).float()

    pruner, pruned = _prune(model, digits, processor)
    assert {p.dtype for p in pruned.parameters()} == {dtype}
    assert {p.device.type for p in pruned.parameters()} == {"cpu"}
    assert next(model.parameters()).dtype == dtype  # the input model is left as it was
    for layer in pruner.report["reconstruction"]["layers"]:
        for key in ("o_proj", "fc2"):
            entry = layer[key]
            assert torch.isfinite(torch.tensor([entry["mse_before"], entry["mse_after"]])).all()
            assert entry["mse_after"] <= entry["mse_before"]
    assert all(c["divergence"] is not None and c["divergence"] >= 0 for c in pruner.report["allocation"]["candidates"])

    # the same arithmetic as float32: without the discrete choices (a validated candidate, or an allocation step or
    # query/key criterion that nearly ties, may flip with the dtype's rounding), the same pruned model
    fixed = dict(target_macs_ratio=None, qk_ratio=0.5, v_ratio=0.25, mlp_ratio=0.5, criterion={"qk": "attention_kl"})
    _, pruned = _prune(model, digits, processor, **fixed)
    _, reference = _prune(reference_model, digits, processor, **fixed)
    got = logits_of(pruned, test_images.to(dtype)).float()
    want = logits_of(reference, test_images)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    relative = float((got - want).abs().max() / want.abs().max())
    assert relative <= LOGIT_TOLERANCE[dtype], relative
    assert float((got.argmax(-1) == want.argmax(-1)).float().mean()) >= 0.95


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_statistics_are_float64_for_half_activations(dtype):
    model = tiny_model("vit", seed=2).to(dtype)
    adapter = get_adapter(model)
    with torch.no_grad():  # large MLP activations: their float16 sum over a batch (> 65504) would be inf
        for idx in range(adapter.num_layers):
            adapter.layer_modules(idx)["fc1"].bias.fill_(10.0)
    seen = []
    handle = adapter.layer_modules(0)["fc2"].register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].dtype))
    criteria = {"qk": "attention_kl", "v": "redundancy", "mlp": "contribution", "hidden": "contribution"}
    criteria["heads"] = "contribution"
    try:
        stats = SNPStatistics(model, criteria).run([pixel_values(32, seed=s) for s in range(2)], show_progress=False)
    finally:
        handle.remove()
    assert seen == [dtype, dtype]  # the hooks saw half activations
    for layer in stats.layers:
        assert set(layer.sums) == {"qk_gram", "v_norm", "v_cos", "mlp", "heads"}
        assert {v.dtype for v in layer.sums.values()} == {torch.float64}
    assert stats.hidden_sum.dtype == torch.float64
    scores = stats.scores()
    tensors = [scores.hidden] + [t for ls in scores.layers for t in (ls.heads, ls.qk, ls.v, ls.mlp, ls.v_similarity)]
    assert {t.dtype for t in tensors} == {torch.float32} and {t.device.type for t in tensors} == {"cpu"}
    assert all(torch.isfinite(t).all() for t in tensors)


def test_finiteness_check_sums_half_in_float32():
    big = torch.full((32, 17, 48), 10.0, dtype=torch.float16)
    assert not torch.isfinite(big.sum())  # what the check must not do
    SNPStatistics._check_finite(big, "test")  # no error
    big[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="Non-finite"):
        SNPStatistics._check_finite(big, "test")


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_projection_stats_of_half_inputs(dtype):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 40, 12, generator=gen), torch.randn(3, 40, 5, generator=gen)
    weight, bias = torch.randn(5, 12, generator=gen), torch.randn(5, generator=gen)
    half, full = ProjectionStats.empty(12, 5), ProjectionStats.empty(12, 5)
    half.add(x.to(dtype), y.to(dtype))
    full.add(x.to(dtype).float(), y.to(dtype).float())  # the same rounded values, in float32
    assert half.xtx.dtype == half.xty.dtype == torch.float64
    torch.testing.assert_close(half.xtx, full.xtx, rtol=0, atol=0)
    new_weight, new_bias = half.solve(weight.to(dtype), bias.to(dtype), ridge=1e-3)
    assert new_weight.dtype == new_bias.dtype == torch.float64
    assert half.error(new_weight.to(dtype), new_bias.to(dtype)) < half.error(weight.to(dtype), bias.to(dtype))


def test_sdpa_pad_rule():
    # CPU (unchanged): the narrower side padded to the wider, no rounding
    assert _sdpa_pad(8, 6, "cpu") == (0, 2)
    assert _sdpa_pad(5, 8, "cpu") == (3, 0)
    assert _sdpa_pad(7, 7, "cpu") == (0, 0)
    # CUDA: both padded to the larger dim rounded up to a multiple of 8 (flash: equal dims; mem-efficient and cuDNN:
    # multiples of 8)
    assert _sdpa_pad(64, 64, "cuda") == (0, 0)
    assert _sdpa_pad(64, 48, "cuda") == (0, 16)
    assert _sdpa_pad(40, 64, "cuda") == (24, 0)
    assert _sdpa_pad(12, 12, "cuda") == (4, 4)
    assert _sdpa_pad(13, 7, "cuda") == (3, 9)
    for qk in range(1, 70):
        for v in range(1, 70):
            qk_pad, v_pad = _sdpa_pad(qk, v, "cuda")
            width = qk + qk_pad
            assert width == v + v_pad and width % 8 == 0 and max(qk, v) <= width < max(qk, v) + 8
    # other devices: untouched
    assert _sdpa_pad(8, 6, "mps") == (0, 0)
    assert _sdpa_pad(8, 6, "meta") == (0, 0)


@pytest.mark.parametrize("rule", ["cpu", "cuda"])
def test_sdpa_padding_is_exact(rule, monkeypatch):
    model = tiny_model("vit", seed=4)
    pruned = apply_plan(model, random_plan(model, seed=4, heads=False))
    dims = get_adapter(pruned).layer_dims()
    assert any(_sdpa_pad(d.qk_head_dim, d.v_head_dim, rule) != (0, 0) for d in dims)
    x = pixel_values(4)
    pruned.set_attn_implementation("eager")
    eager = logits_of(pruned, x)
    # the rule of `rule` applied on the CPU, so that the padded path runs here
    monkeypatch.setattr(modeling_snp, "_sdpa_pad", lambda qk, v, device_type: _sdpa_pad(qk, v, rule))
    pruned.set_attn_implementation("sdpa")
    torch.testing.assert_close(logits_of(pruned, x), eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["vit", "deit"])
def test_fused_qkv_inference_is_exact_and_follows_the_weights(family, monkeypatch):
    model = tiny_model(family, seed=5)
    pruned = apply_plan(model, random_plan(model, seed=5, heads=True)).eval()
    dims = get_adapter(pruned).layer_dims()
    assert any(_sdpa_pad(d.qk_head_dim, d.v_head_dim, "cuda") != (0, 0) for d in dims)
    x = pixel_values(4)
    pruned.set_attn_implementation("eager")
    eager = logits_of(pruned, x)
    # the CUDA rules (padding, fused projection) applied on the CPU
    monkeypatch.setattr(modeling_snp, "_sdpa_pad", lambda qk, v, device_type: _sdpa_pad(qk, v, "cuda"))
    monkeypatch.setattr(modeling_snp, "_fuse_qkv", lambda device_type: True)
    pruned.set_attn_implementation("sdpa")
    attentions = [m for m in pruned.modules() if isinstance(m, modeling_snp.SNPAttention)]
    torch.testing.assert_close(logits_of(pruned, x), eager, rtol=1e-5, atol=1e-5)
    assert all(m._fused is not None for m in attentions)  # the fused path ran
    assert set(pruned.state_dict()) == set(model.state_dict())  # the cache is neither a parameter nor a buffer

    # a weight changed in place (an optimizer step, load_state_dict) or replaced (`.to()`) is seen
    with torch.no_grad():
        attentions[0].q_proj.weight.mul_(1.5)
        attentions[-1].v_proj.bias.add_(0.3)
        attentions[-1].o_proj.weight = torch.nn.Parameter(attentions[-1].o_proj.weight * 0.5)
    fused = logits_of(pruned, x)
    pruned.set_attn_implementation("eager")
    torch.testing.assert_close(fused, logits_of(pruned, x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fused, eager, atol=1e-3)

    # an edit through `.data` bumps no version counter: `eval()` (what one calls after editing weights) drops the copies
    pruned.set_attn_implementation("sdpa")
    before = logits_of(pruned, x)
    attentions[0].k_proj.weight.data.mul_(0.5)
    pruned.eval()
    edited = logits_of(pruned, x)
    pruned.set_attn_implementation("eager")
    torch.testing.assert_close(edited, logits_of(pruned, x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(edited, before, atol=1e-4)
    fused = edited

    # a hook on a projection (scoring and refit statistics, user hooks) sees its inputs: the plain path runs
    seen = []
    handles = [attentions[1].o_proj.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[-1]))]
    handles.append(attentions[1].q_proj.register_forward_hook(lambda m, args, out: seen.append(out.shape[-1])))
    pruned.set_attn_implementation("sdpa")
    hooked = logits_of(pruned, x)
    for handle in handles:
        handle.remove()
    assert sorted(seen) == sorted([attentions[1].o_proj.in_features, attentions[1].q_proj.out_features])
    assert attentions[1]._fused is None and attentions[0]._fused is not None
    torch.testing.assert_close(hooked, fused, rtol=1e-5, atol=1e-5)

    # training (gradients) takes the plain path and drops the cache
    pruned.set_attn_implementation("sdpa")
    pruned.train()
    pruned(pixel_values=x).logits.sum().backward()
    assert all(m._fused is None for m in attentions)
    assert attentions[0].q_proj.weight.grad is not None


def test_pipeline_with_the_cuda_attention_rules_prunes_the_same(digits, processor, test_images, monkeypatch):
    # the pipeline's own no-grad passes (scoring, refit, validation) on a model whose inference takes the fused path
    model = tiny_model("vit", attn="sdpa", seed=7, num_labels=10)
    _, want = _prune(copy.deepcopy(model), digits, processor)
    monkeypatch.setattr(modeling_snp, "_sdpa_pad", lambda qk, v, device_type: _sdpa_pad(qk, v, "cuda"))
    monkeypatch.setattr(modeling_snp, "_fuse_qkv", lambda device_type: True)
    _, got = _prune(model, digits, processor)
    assert get_adapter(got).layer_dims() == get_adapter(want).layer_dims()
    torch.testing.assert_close(logits_of(got, test_images), logits_of(want, test_images), rtol=1e-4, atol=1e-4)


def test_meta_model_is_refused(processor):
    model = tiny_model("vit").to("meta")
    pruner = SNPPruner(model, image_processor=processor)
    with pytest.raises(ValueError, match="meta device"):
        pruner.prune(SNPConfig(qk_ratio=0.5, criterion="magnitude", reconstruct="none"), show_progress=False)


# ---- on a GPU (skipped without CUDA) ----------------------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_cuda_half_pipeline(dtype, digits, processor, test_images):
    model = tiny_model("vit", attn="sdpa", seed=7, num_labels=10).to(dtype)
    reference_model = copy.deepcopy(model).float()  # the same (rounded) weights, float32 on the CPU
    pruner, pruned = _prune(model.to("cuda"), digits, processor)
    assert {(p.device.type, p.dtype) for p in pruned.parameters()} == {("cuda", dtype)}
    _, reference = _prune(reference_model, digits, processor)
    got = logits_of(pruned, test_images.to("cuda", dtype)).float().cpu()
    want = logits_of(reference, test_images)
    relative = float((got - want).abs().max() / want.abs().max())
    assert relative <= LOGIT_TOLERANCE[dtype], relative


@cuda
@pytest.mark.parametrize("backend", ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"])
def test_cuda_fused_sdpa_takes_the_padded_dims(backend, monkeypatch):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend)
    probe = torch.randn(2, 4, 17, 8, device="cuda", dtype=torch.float16)
    try:
        with sdpa_kernel([backend]):
            torch.nn.functional.scaled_dot_product_attention(probe, probe, probe)
    except RuntimeError:
        pytest.skip(f"{backend.name} is not available on this GPU / build")
    model = tiny_model("vit", seed=4)
    pruned = apply_plan(model, random_plan(model, seed=4, heads=False)).to("cuda", torch.float16)
    dims = get_adapter(pruned).layer_dims()
    assert any(d.qk_head_dim != d.v_head_dim for d in dims) and all(d.qk_head_dim % 8 for d in dims)
    x = pixel_values(4).to("cuda", torch.float16)
    pruned.set_attn_implementation("eager")
    eager = logits_of(pruned, x).float()
    pruned.set_attn_implementation("sdpa")
    with sdpa_kernel([backend]):
        fused = logits_of(pruned, x).float()
    torch.testing.assert_close(fused, eager, rtol=2e-2, atol=2e-2)
    # inference on CUDA ran query/key/value as one padded projection
    assert all(m._fused is not None for m in pruned.modules() if isinstance(m, modeling_snp.SNPAttention))
    # without the padding, the kernel refuses these dims
    monkeypatch.setattr(modeling_snp, "_sdpa_pad", lambda qk, v, device_type: (0, 0))
    with pytest.raises(RuntimeError), sdpa_kernel([backend]):
        logits_of(pruned, x)


@cuda
def test_model_on_several_devices_is_refused(processor):
    model = tiny_model("vit").to("cuda")
    model.classifier.to("cpu")
    with pytest.raises(ValueError, match="several devices"):
        SNPPruner(model, image_processor=processor).prune(
            SNPConfig(qk_ratio=0.5, criterion="magnitude", reconstruct="none"), show_progress=False
        )


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_finetune_stays_on_the_gpu(dtype, digits, processor):
    from optimum_snp.calibration import calibration_batches
    from optimum_snp.finetune import finetune

    train = digits.select(range(256))
    images = torch.cat(calibration_batches(train, processor, num_samples=256, batch_size=64, show_progress=False))
    images, labels = images.to("cuda", dtype), torch.tensor(train["label"], device="cuda")
    teacher = tiny_model("vit", attn="sdpa", seed=7, num_labels=10).to("cuda", dtype)
    _, student = _prune(teacher, digits, processor)
    teacher_logits = logits_of(teacher, images).float()

    def objective() -> float:  # what the trainer minimises: soft distillation (T=2, alpha=0.5) + label cross entropy
        logits = logits_of(student, images).float()
        kl = torch.nn.functional.kl_div((logits / 2).log_softmax(-1), (teacher_logits / 2).log_softmax(-1),
                                        reduction="batchmean", log_target=True)  # fmt: skip
        return float(0.5 * 4 * kl + 0.5 * torch.nn.functional.cross_entropy(logits, labels))

    before = objective()
    result = finetune(student, teacher, train, processor, epochs=8, batch_size=32, learning_rate=3e-4,
                      show_progress=False)  # fmt: skip
    assert {(p.device.type, p.dtype) for p in student.parameters()} == {("cuda", dtype)}
    assert {(p.device.type, p.dtype) for p in teacher.parameters()} == {("cuda", dtype)}
    assert torch.isfinite(torch.tensor(result["train_loss"]))
    assert objective() < 0.95 * before  # the training on the GPU lowered the objective on its images


@cuda
def test_cuda_text_pipeline_matches_the_cpu(tmp_path):
    from transformers import BertConfig, BertModel

    from .text_utils import encode, sentences, text_dataset, tiny_text_model, word_tokenizer

    tokenizer = word_tokenizer(tmp_path)
    model = tiny_text_model(BertModel, BertConfig, attn="sdpa")
    config = SNPConfig(target_macs_ratio=0.6, num_calibration_samples=16, num_validation_samples=8, batch_size=4,
                       allocation="uniform")  # fmt: skip
    on_cpu = SNPPruner(copy.deepcopy(model), tokenizer=tokenizer).prune(config, text_dataset(30), show_progress=False)
    pruner = SNPPruner(model.to("cuda"), tokenizer=tokenizer)
    on_gpu = pruner.prune(config, text_dataset(30), show_progress=False)
    assert {p.device.type for p in on_gpu.parameters()} == {"cuda"}
    assert get_adapter(on_gpu).layer_dims() == get_adapter(on_cpu).layer_dims()
    inputs = encode(tokenizer, sentences(6, seed=3))
    with torch.no_grad():
        want = on_cpu(**inputs).last_hidden_state
        got = on_gpu(**{k: v.to("cuda") for k, v in inputs.items()}).last_hidden_state.cpu()
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
