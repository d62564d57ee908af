"""timm ViT/DeiT as input: exact conversion (instances, TimmWrapper, local timm folders, Hub ids), clear errors for
what cannot be mapped, the image processor against timm's eval transform, and the whole pipeline on a converted
model."""

from __future__ import annotations

import sys

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

import optimum_snp  # noqa: F401  (registers the SNP classes with the Auto classes)
from optimum_snp import SNPConfig, SNPPruner
from optimum_snp.adapters.timm import (
    TIMM_CONVERTERS,
    convert_timm_model,
    image_processor_from_timm,
    is_timm_model,
    is_timm_source,
    load_timm_source,
    require_timm,
    unwrap_timm,
)
from optimum_snp.adapters.vit_timm import convert_timm_vit
from optimum_snp.pruner import load_model


timm = pytest.importorskip("timm")
from timm.models.deit import VisionTransformerDistilled  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402


TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)
TOL = 1e-5


def _noisy(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturbs every parameter: timm's init sets biases to 0, norms to 1 and tokens near 0, which would hide a
    mis-mapped tensor."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    return model.eval()


def timm_vit(name: str = "vit_tiny_patch16_224", seed: int = 0, **kwargs) -> torch.nn.Module:
    return _noisy(timm.create_model(name, pretrained=False, **{**TINY, "num_classes": 5, **kwargs}), seed)


def pixels(batch: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def timm_reference(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def converted_output(model: torch.nn.Module, x: torch.Tensor, distilled: bool = False) -> torch.Tensor:
    """Logits, or for a base model timm's pooled features (class token; distilled: mean of class and distillation)."""
    with torch.no_grad():
        out = model(pixel_values=x)
    if getattr(out, "logits", None) is not None:
        return out.logits
    tokens = out.last_hidden_state
    return tokens[:, :2].mean(1) if distilled else tokens[:, 0]


# ---- conversion exactness -----------------------------------------------------------------------------------
CASES = {
    "vit": (lambda: timm_vit("vit_tiny_patch16_224"), "ViTForImageClassification"),
    "deit": (lambda: timm_vit("deit_tiny_patch16_224"), "ViTForImageClassification"),
    "deit-distilled": (lambda: timm_vit("deit_tiny_distilled_patch16_224"), "DeiTForImageClassificationWithTeacher"),
    "vit-headless": (lambda: timm_vit("vit_tiny_patch16_224", num_classes=0), "ViTModel"),
    "deit-distilled-headless": (lambda: timm_vit("deit_tiny_distilled_patch16_224", num_classes=0), "DeiTModel"),
    "no-biases-gelu-tanh-rect": (
        lambda: _noisy(
            VisionTransformer(
                img_size=(32, 48),
                patch_size=(8, 16),
                embed_dim=24,
                depth=2,
                num_heads=3,
                mlp_ratio=2.5,
                num_classes=4,
                qkv_bias=False,
                proj_bias=False,
                act_layer="gelu_tanh",
            )
        ),
        "ViTForImageClassification",
    ),
    "distilled-direct-quick-gelu": (
        lambda: _noisy(VisionTransformerDistilled(**TINY, num_classes=3, act_layer="quick_gelu")),
        "DeiTForImageClassificationWithTeacher",
    ),
}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("case", list(CASES))
def test_conversion_is_exact(case, attn):
    build, class_name = CASES[case]
    model = build()
    height, width = model.patch_embed.img_size
    # timm's 'center' crop of a non-square input has no transformers processor: that model needs one given
    converted, processor = convert_timm_model(model, with_image_processor=height == width)
    converted.set_attn_implementation(attn)
    assert type(converted).__name__ == class_name
    assert converted.config._attn_implementation == attn and not converted.training
    config = converted.config
    assert config.layer_norm_eps == 1e-6 and config.num_hidden_layers == len(model.blocks)
    assert config.qkv_bias == (model.blocks[0].attn.qkv.bias is not None)
    assert processor is None if height != width else processor.crop_size == {"height": height, "width": width}
    x = torch.randn(3, 3, height, width, generator=torch.Generator().manual_seed(1))
    expected = timm_reference(model, x)
    distilled = isinstance(model, VisionTransformerDistilled)
    diff = (converted_output(converted, x, distilled) - expected).abs().max().item()
    assert diff < TOL, f"{case}/{attn}: max |logit difference| {diff:.2e}"
    if class_name.endswith("Model"):  # the whole token sequence is timm's forward_features
        with torch.no_grad():
            tokens = converted(pixel_values=x).last_hidden_state
            assert (tokens - model.forward_features(x)).abs().max().item() < TOL


def test_conversion_keeps_mode_labels_and_leaves_timm_alone():
    model = timm_vit().train()
    model.pretrained_cfg = {**model.pretrained_cfg, "label_names": ["a", "b", "c", "d", "e"]}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted, _ = convert_timm_model(model)
    assert converted.training and converted.config.id2label == dict(enumerate("abcde"))
    assert converted.config.label2id == {c: i for i, c in enumerate("abcde")}
    assert converted.name_or_path == ""  # random weights: not the Hub checkpoint its pretrained_cfg names
    with torch.no_grad():
        converted.classifier.weight.zero_()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # copies, not shared tensors
    # label names through label_descriptions (timm's ImageNet checkpoints: synset -> words)
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "label_names": ["n1", "n2", "n3", "n4", "n5"],
        "label_descriptions": {"n1": "tench", "n2": "goldfish"},
        "source": "hf-hub",
        "hf_hub_id": "someone/fish-vit",
    }
    converted = convert_timm_model(model.eval())[0]
    assert converted.config.id2label == {0: "tench", 1: "goldfish", 2: "n3", 3: "n4", 4: "n5"}
    assert converted.name_or_path == "someone/fish-vit"  # built from 'hf-hub:someone/fish-vit'


def test_timm_wrapper_models(tmp_path):
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification, TimmWrapperModel

    args = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4}
    config = TimmWrapperConfig(
        architecture="deit_tiny_patch16_224", model_args=args, num_labels=3, id2label={0: "cat", 1: "dog", 2: "owl"}
    )
    wrapper = TimmWrapperForImageClassification(config)
    _noisy(wrapper.timm_model)
    wrapper.train()  # the conversion keeps the mode
    assert is_timm_model(wrapper) and unwrap_timm(wrapper)[0] is wrapper.timm_model
    pruner = SNPPruner.from_pretrained(wrapper)
    converted = pruner.model
    assert type(converted).__name__ == "ViTForImageClassification" and converted.training
    assert converted.config.id2label == {0: "cat", 1: "dog", 2: "owl"}
    assert pruner.image_processor.crop_size == {"height": 32, "width": 32}
    assert list(pruner.image_processor.image_mean) == [0.485, 0.456, 0.406]  # DeiT's data config
    x = pixels()
    wrapper.eval(), converted.eval()
    with torch.no_grad():
        expected = wrapper(pixel_values=x).logits
    assert (converted_output(converted, x) - expected).abs().max().item() < TOL

    # a TimmWrapper folder saved by transformers (weights under `timm_model.`), and a TimmWrapperImageProcessor (which
    # transformers cannot save) given explicitly: replaced by its transformers equivalent
    from transformers import TimmWrapperImageProcessor

    wrapper.save_pretrained(tmp_path / "wrapper")
    assert is_timm_source(tmp_path / "wrapper")
    timm_processor = TimmWrapperImageProcessor(pretrained_cfg={"input_size": (3, 32, 32), "crop_pct": 1.0})
    pruner = SNPPruner.from_pretrained(tmp_path / "wrapper", image_processor=timm_processor)
    assert type(pruner.model).__name__ == "ViTForImageClassification" and not pruner.model.training
    assert (converted_output(pruner.model, x) - expected).abs().max().item() < TOL
    assert type(pruner.image_processor).__name__.startswith("BitImageProcessor")
    assert pruner.image_processor.size == {"shortest_edge": 32}

    base = TimmWrapperModel(TimmWrapperConfig(architecture="deit_tiny_patch16_224", model_args=args)).eval()
    _noisy(base.timm_model)
    custom = image_processor_from_timm({"input_size": (3, 32, 32), "crop_pct": 1.0})
    pruner = SNPPruner.from_pretrained(base, image_processor=custom)
    assert type(pruner.model).__name__ == "ViTModel" and pruner.image_processor is custom
    with torch.no_grad():
        out = base(pixel_values=x)
    assert (converted_output(pruner.model, x) - out.pooler_output).abs().max().item() < TOL


def test_local_timm_folder(tmp_path):
    from timm.models._hub import save_for_hf

    model = timm_vit("deit_tiny_distilled_patch16_224", num_classes=3)
    folder = tmp_path / "timm-deit"
    save_for_hf(model, str(folder), safe_serialization=True, model_config={"label_names": ["x", "y", "z"]})
    assert (folder / "model.safetensors").is_file()
    assert is_timm_source(folder) and not is_timm_source(tmp_path)

    pruner = SNPPruner.from_pretrained(folder)
    converted = pruner.model
    assert type(converted).__name__ == "DeiTForImageClassificationWithTeacher" and not converted.training
    assert converted.config.id2label == {0: "x", 1: "y", 2: "z"} and converted.name_or_path == str(folder)
    assert pruner.source == str(folder)
    assert pruner.image_processor.crop_size == {"height": 32, "width": 32}
    assert pruner.image_processor.size == {"shortest_edge": 35}  # floor(32 / crop_pct 0.9)
    x = pixels()
    assert (converted_output(converted, x) - timm_reference(model, x)).abs().max().item() < TOL
    # load_model routes the folder the same way
    assert (converted_output(load_model(str(folder)), x) - timm_reference(model, x)).abs().max().item() < TOL
    # a folder saved by transformers is not a timm folder
    converted.save_pretrained(tmp_path / "transformers")
    assert not is_timm_source(tmp_path / "transformers")


def test_hub_ids_go_through_timm(monkeypatch):
    calls = []
    tiny = timm_vit()

    def fake_create_model(name, pretrained=False, **kwargs):
        calls.append((name, pretrained, kwargs))
        return tiny

    monkeypatch.setattr(timm, "create_model", fake_create_model)
    assert is_timm_source("timm/vit_tiny_patch16_224.augreg_in21k") and is_timm_source("hf-hub:someone/vit")
    assert not is_timm_source("google/vit-base-patch16-224")
    model, processor = load_timm_source("timm/vit_tiny_patch16_224.augreg_in21k", cache_dir="/nowhere")
    assert calls == [("hf-hub:timm/vit_tiny_patch16_224.augreg_in21k", True, {"cache_dir": "/nowhere"})]
    assert model.name_or_path == "timm/vit_tiny_patch16_224.augreg_in21k" and list(processor.image_mean) == [0.5] * 3
    pruner = SNPPruner.from_pretrained("hf-hub:timm/vit_tiny_patch16_224.augreg_in21k")
    assert calls[-1][0] == "hf-hub:timm/vit_tiny_patch16_224.augreg_in21k"
    assert pruner.source == "timm/vit_tiny_patch16_224.augreg_in21k"
    assert type(pruner.model).__name__ == "ViTForImageClassification" and not pruner.model.training


# ---- errors -------------------------------------------------------------------------------------------------
UNSUPPORTED = {
    "global_pool='avg'": dict(global_pool="avg", fc_norm=False),
    "class_token=False": dict(class_token=False, global_pool="avg", fc_norm=False),
    "reg_tokens=2": dict(reg_tokens=2),
    "init_values": dict(init_values=1e-5),
    "qk_norm=True": dict(qk_norm=True),
    "fc_norm=True": dict(fc_norm=True),
    "pre_norm=True": dict(pre_norm=True),
    "no_embed_class=True": dict(no_embed_class=True),
    "dynamic_img_size=True": dict(dynamic_img_size=True),
    "act_layer=SiLU": dict(act_layer="silu"),
    "mlp_layer=SwiGLU": dict(mlp_layer="swiglu"),
    "attn_pool": dict(global_pool="map"),
    "final_norm=False": dict(final_norm=False),
    "block_fn=ResPostBlock": dict(block_fn="res_post"),
}


@pytest.mark.parametrize("option", list(UNSUPPORTED))
def test_unsupported_options_raise_naming_the_option(option):
    kwargs = dict(UNSUPPORTED[option])
    if kwargs.get("mlp_layer") == "swiglu":
        from timm.layers import SwiGLU

        kwargs["mlp_layer"] = SwiGLU
    if kwargs.get("block_fn") == "res_post":
        from timm.models.vision_transformer import ResPostBlock

        kwargs["block_fn"] = ResPostBlock
    model = VisionTransformer(**TINY, num_classes=3, **kwargs).eval()
    with pytest.raises(ValueError, match="Cannot convert the timm model") as info:
        convert_timm_vit(model)
    assert option in str(info.value)
    with pytest.raises(ValueError, match="no transformers ViT/DeiT equivalent"):
        SNPPruner.from_pretrained(model)


def test_unsupported_timm_class_lists_the_supported_ones():
    assert {"VisionTransformer", "VisionTransformerDistilled"} <= set(TIMM_CONVERTERS)
    from timm.models.mlp_mixer import MlpMixer

    model = MlpMixer(num_classes=3, img_size=32, patch_size=16, num_blocks=1, embed_dim=16)
    with pytest.raises(ValueError, match=r"class MlpMixer\).*VisionTransformer, VisionTransformerDistilled"):
        convert_timm_model(model)


def test_missing_timm_says_how_to_install(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text('{"architecture": "vit_tiny_patch16_224", "num_classes": 5}')
    monkeypatch.setitem(sys.modules, "timm", None)
    message = 'optimum-snp needs timm for timm models: pip install "optimum-snp\\[timm\\]"'
    with pytest.raises(ImportError, match=message):
        require_timm()
    with pytest.raises(ImportError, match=message):
        SNPPruner.from_pretrained("timm/vit_tiny_patch16_224")
    with pytest.raises(ImportError, match=message):
        SNPPruner.from_pretrained(tmp_path)


# ---- the image processor ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photo():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    return Image.fromarray(sklearn_datasets.load_sample_image("china.jpg"))  # 640 x 427


DATA_CONFIGS = {
    "center-0.9-bicubic": dict(input_size=(3, 224, 224), interpolation="bicubic", crop_pct=0.9, crop_mode="center"),
    "center-1.0-bilinear": dict(input_size=(3, 96, 96), interpolation="bilinear", crop_pct=1.0, crop_mode="center"),
    "center-0.875-384": dict(input_size=(3, 384, 384), interpolation="bicubic", crop_pct=0.875, crop_mode="center"),
    "squash-0.95": dict(input_size=(3, 160, 160), interpolation="bicubic", crop_pct=0.95, crop_mode="squash"),
}


def _pixel_gap(processor, data_config, image) -> tuple[float, float]:
    """(max |difference|, max |difference| with transformers' crop window one pixel left of or above timm's) between
    the processor's output and timm's eval transform (torchvision's CenterCrop in timm rounds an odd margin's half to
    even, transformers floors it)."""
    ours = processor(image, return_tensors="pt").pixel_values[0]
    theirs = timm.data.create_transform(**data_config)(image)
    assert ours.shape == theirs.shape
    shifted = min((ours[..., 1:] - theirs[..., :-1]).abs().max(), (ours[..., 1:, :] - theirs[..., :-1, :]).abs().max())
    return float((ours - theirs).abs().max()), float(shifted)


@pytest.mark.parametrize("name", list(DATA_CONFIGS))
def test_image_processor_reproduces_timm_eval_transform(photo, name):
    data_config = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), **DATA_CONFIGS[name]}
    processor = image_processor_from_timm(data_config)
    level = 2 / 255 / min(data_config["std"]) + 1e-6  # two 8-bit levels: PIL (timm) vs torchvision resampling
    # a width at which timm's center-crop offset (rounded) and transformers' (floored) agree
    width = next(
        w for w in range(640, 600, -1) if _pixel_gap(processor, data_config, photo.crop((0, 0, w, 427)))[0] < 1
    )
    exact, _ = _pixel_gap(processor, data_config, photo.crop((0, 0, width, 427)))
    assert exact <= level, f"{name}: max |difference| {exact:.4f} at width {width}"
    # at any width, the result is timm's within two levels, or timm's with the crop window one pixel away
    for w in range(width - 3, width):
        gap, shifted = _pixel_gap(processor, data_config, photo.crop((0, 0, w, 427)))
        assert min(gap, shifted) <= level, f"{name}: width {w}: {gap:.4f} / shifted {shifted:.4f}"


def test_image_processor_from_a_timm_model_uses_its_input_size(photo):
    model = timm_vit("vit_tiny_patch16_224")  # pretrained_cfg still says 224 x 224
    assert model.pretrained_cfg["input_size"] == (3, 224, 224)
    processor = image_processor_from_timm(model)
    assert processor.crop_size == {"height": 32, "width": 32} and processor.size == {"shortest_edge": 35}
    assert list(processor.image_mean) == [0.5, 0.5, 0.5] and processor.resample == 3  # bicubic


@pytest.mark.parametrize(
    "data_config, match",
    [
        (dict(input_size=(3, 224, 224), crop_mode="border"), "crop_mode='border'"),
        (dict(input_size=(3, 224, 160), crop_mode="center"), "non-square input size 224x160"),
        (dict(input_size=(3, 224, 224), interpolation="random"), "interpolation='random'"),
    ],
)
def test_image_processor_errors(data_config, match):
    with pytest.raises(ValueError, match=match):
        image_processor_from_timm(data_config)


# ---- the pipeline -------------------------------------------------------------------------------------------
def digit_images(n: int = 32) -> datasets.Dataset:
    """scikit-learn's 8x8 digits as RGB PIL images, upscaled to 40 x 40."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    digits = sklearn_datasets.load_digits()
    pixels8 = np.round(digits.images[:n] * 255 / 16).astype(np.uint8)
    images = [Image.fromarray(np.repeat(p[..., None], 3, -1)).resize((40, 40), Image.NEAREST) for p in pixels8]
    return datasets.Dataset.from_dict({"image": images, "label": digits.target[:n].tolist()})


def test_prune_a_timm_deit_save_and_reload(tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = timm_vit("deit_tiny_distilled_patch16_224", depth=3, num_classes=10)
    config = SNPConfig(target_macs_ratio=0.5, num_calibration_samples=16, num_validation_samples=8, batch_size=8)
    pruner = SNPPruner.from_pretrained(model)
    pruned = pruner.prune(config, calibration_dataset=digit_images(), save_dir=tmp_path / "out", show_progress=False)
    assert type(pruned).__name__ == "SNPDeiTForImageClassificationWithTeacher"
    assert pruner.report["macs"]["after"] <= 0.52 * pruner.report["macs"]["before"]

    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "out").eval()
    x = pixels()
    pruned.eval()
    assert (converted_output(reloaded, x) - converted_output(pruned, x)).abs().max().item() < TOL
    processor = AutoImageProcessor.from_pretrained(tmp_path / "out")
    assert type(processor).__name__.startswith("BitImageProcessor")
    assert processor.crop_size == {"height": 32, "width": 32} and processor.size == {"shortest_edge": 35}
    assert list(processor.image_mean) == [0.485, 0.456, 0.406] and list(processor.image_std) == [0.229, 0.224, 0.225]
    image = digit_images(1)[0]["image"]
    expected = pruner.image_processor(image, return_tensors="pt").pixel_values
    assert torch.allclose(processor(image, return_tensors="pt").pixel_values, expected)
