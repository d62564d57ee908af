"""timm models as input: convert a timm model (an instance, a `timm/<name>` Hub id, a local timm folder, or the
`TimmWrapperModel` / `TimmWrapperForImageClassification` that transformers builds around one) into the equivalent
transformers model, which the pipeline then prunes like any other.

- A converter per timm class (`register_timm_converter(("VisionTransformer", ...), fn)`, `fn(timm_module)` -> a
  transformers `PreTrainedModel` with the same outputs); `convert_timm_model` dispatches on the timm class name and
  adds what every family shares: the label names, the Hub id, train/eval mode and the image processor.
- timm's data config (`pretrained_cfg`: input size, mean, std, interpolation, crop_pct, crop_mode) becomes a
  transformers image processor that reproduces timm's eval transform (`image_processor_from_timm`): resize the shorter
  side to floor(size / crop_pct) (crop_mode 'center'; 'squash' resizes both sides), center crop to the input size,
  rescale by 1/255, normalize. Known difference: when the margin to crop is odd, torchvision's CenterCrop (timm)
  rounds the offset half to even and transformers floors it, so the crop window can sit one pixel apart.
- `load_timm_source` loads a `timm/<name>` or `hf-hub:<repo>` id (`timm.create_model(..., pretrained=True)`) or a
  local folder in timm's Hub format (`config.json` with `architecture`, `num_classes`, `pretrained_cfg`, plus
  `model.safetensors`), or a folder / repo saved by transformers' TimmWrapper, and converts it.

timm is optional: it is imported only when a timm model is converted (`require_timm`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping

from torch import nn


logger = logging.getLogger(__name__)

# timm class name -> fn(timm module) -> transformers PreTrainedModel (filled by the family modules at import)
TIMM_CONVERTERS: dict[str, Callable[[nn.Module], nn.Module]] = {}
TIMM_WRAPPER_CLASSES = ("TimmWrapperModel", "TimmWrapperForImageClassification")
TIMM_HUB_PREFIXES = ("hf-hub:", "timm/")
# transformers image processors resample with PIL's enum; timm names the same filters in lower case
_RESAMPLE_NAMES = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


def require_timm():
    """The `timm` module, or an ImportError that says how to install it."""
    try:
        import timm
    except ImportError as err:
        raise ImportError('optimum-snp needs timm for timm models: pip install "optimum-snp[timm]"') from err
    return timm


def register_timm_converter(timm_class_names: tuple[str, ...], fn: Callable[[nn.Module], nn.Module]) -> Callable:
    """Converts instances of the timm classes named `timm_class_names` with `fn(timm_module)`, which returns the
    equivalent transformers model (or raises ValueError naming the option it cannot map)."""
    if isinstance(timm_class_names, str) or not callable(fn):
        raise TypeError("register_timm_converter takes a tuple of timm class names and a callable.")
    for name in timm_class_names:
        TIMM_CONVERTERS[name] = fn
    return fn


def supported_timm_classes() -> list[str]:
    return sorted(TIMM_CONVERTERS)


# ---- instances ----------------------------------------------------------------------------------------------
def _is_timm_wrapper(obj) -> bool:
    cls = type(obj)
    return cls.__name__ in TIMM_WRAPPER_CLASSES and cls.__module__.startswith("transformers.")


def is_timm_model(obj) -> bool:
    """True for a timm module (its class comes from `timm.`) and for transformers' TimmWrapper models."""
    if not isinstance(obj, nn.Module):
        return False
    return type(obj).__module__.split(".")[0] == "timm" or _is_timm_wrapper(obj)


def unwrap_timm(obj: nn.Module) -> tuple[nn.Module, dict]:
    """(the timm module, its `pretrained_cfg` as a dict) of a timm module or a TimmWrapper model. For a wrapper, the
    `pretrained_cfg` of its config (read from the checkpoint's config.json) overrides the timm module's defaults, and
    its label names come from `config.id2label`."""
    if _is_timm_wrapper(obj):
        module = obj.timm_model
        cfg = dict(getattr(module, "pretrained_cfg", None) or {})
        cfg.update(getattr(obj.config, "pretrained_cfg", None) or {})
        id2label = getattr(obj.config, "id2label", None) or {}
        names = [id2label.get(i) for i in range(len(id2label))]
        if names and all(isinstance(n, str) for n in names) and names != [f"LABEL_{i}" for i in range(len(names))]:
            cfg["label_names"] = names
            cfg.pop("label_descriptions", None)
        return module, cfg
    if not is_timm_model(obj):
        raise TypeError(f"Expected a timm model or a transformers TimmWrapper model, got {type(obj).__name__}.")
    return obj, dict(getattr(obj, "pretrained_cfg", None) or {})


def _label_names(timm, cfg: Mapping, num_labels: int) -> list[str] | None:
    """The class names of a `num_labels`-way timm classifier: `label_names` (through `label_descriptions` when the
    checkpoint has them, e.g. ImageNet synsets -> 'tench, Tinca tinca'), else the ImageNet names timm infers from the
    config, as transformers' TimmWrapperConfig does; None when unknown."""
    names = cfg.get("label_names")
    if isinstance(names, Mapping):  # class index -> name (timm allows gaps; JSON makes the keys strings)
        names = [names.get(i, names.get(str(i))) for i in range(num_labels)]
    if names is not None and len(names) == num_labels and all(n is not None for n in names):
        descriptions = cfg.get("label_descriptions") or {}
        if isinstance(descriptions, Mapping):
            return [str(descriptions.get(n, n)) for n in names]
        return [str(n) for n in names]
    try:
        subset = timm.data.infer_imagenet_subset(dict(cfg))
        if subset:
            info = timm.data.ImageNetInfo(subset)
            if info.num_classes() == num_labels:
                descriptions = info.label_descriptions(as_dict=True)
                return [descriptions[s] for s in info.label_names()]
    except (AttributeError, KeyError, ValueError, OSError):
        pass  # an older timm, or a config it cannot place: keep transformers' default names
    return None


def _set_labels(config, names: list[str]) -> None:
    config.id2label = dict(enumerate(names))
    config.label2id = {n: i for i, n in enumerate(names)}  # as transformers derives it: a repeated name keeps its last


def timm_data_config(obj: nn.Module) -> dict:
    """timm's eval data config of a timm module or TimmWrapper (`timm.data.resolve_data_config`), with the input size
    the module actually takes (timm keeps the checkpoint's input size in `pretrained_cfg` when a model is built with
    another `img_size`)."""
    timm = require_timm()
    module, cfg = unwrap_timm(obj)
    data_config = dict(timm.data.resolve_data_config(pretrained_cfg=cfg or None, model=module))
    patch_embed = getattr(module, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None)
    if img_size is not None and not getattr(module, "dynamic_img_size", False):
        height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        data_config["input_size"] = (data_config["input_size"][0], int(height), int(width))
    return data_config


def image_processor_from_timm(timm_module_or_data_config):
    """A transformers image processor (`BitImageProcessor`) reproducing timm's eval transform of a timm module,
    TimmWrapper, TimmWrapperImageProcessor, or a data config / pretrained_cfg dict.

    crop_mode 'center' (timm's default, square input sizes) and 'squash' are reproduced: shorter side (or both sides)
    resized to floor(size / crop_pct) with the config's filter, center crop, rescale 1/255, normalize; with
    crop_pct 1.0 the crop keeps the whole shorter side. The crop offset may differ by one pixel (see the module
    docstring). crop_mode 'border' (letterbox padding) and 'center' on a non-square input size have no transformers
    equivalent and raise ValueError: pass an image processor yourself.
    """
    timm = require_timm()
    import transformers
    from transformers.image_utils import PILImageResampling
    from transformers.utils import is_torchvision_available

    source = timm_module_or_data_config
    if isinstance(source, nn.Module):
        data_config = timm_data_config(source)
    elif type(source).__name__ == "TimmWrapperImageProcessor":
        data_config = dict(source.data_config)
    elif isinstance(source, Mapping):
        # a data config or a pretrained_cfg: resolve_data_config fills what is missing with timm's defaults
        data_config = dict(timm.data.resolve_data_config(pretrained_cfg=dict(source) or {"crop_mode": "center"}))
    else:
        raise TypeError(
            "image_processor_from_timm takes a timm model, a TimmWrapper model or image processor, or a timm data "
            f"config dict; got {type(source).__name__}."
        )
    channels, height, width = (int(v) for v in data_config["input_size"])
    crop_pct = float(data_config.get("crop_pct") or timm.data.DEFAULT_CROP_PCT)
    crop_mode = data_config.get("crop_mode") or "center"
    interpolation = str(data_config.get("interpolation") or "bilinear").lower()
    if channels != 3:
        raise ValueError(
            f"The timm data config takes {channels}-channel images (input_size={data_config['input_size']}); the "
            "derived image processor makes RGB images. Pass an image processor for this model."
        )
    if interpolation not in _RESAMPLE_NAMES:
        raise ValueError(
            f"timm interpolation={interpolation!r} has no transformers equivalent (supported: {_RESAMPLE_NAMES}); "
            "pass an image processor for this model."
        )
    if crop_mode == "center":
        if height != width:
            raise ValueError(
                f"timm crop_mode='center' with a non-square input size {height}x{width} resizes each image by its own "
                "aspect ratio, which no transformers image processor reproduces; pass an image processor."
            )
        size = {"shortest_edge": math.floor(height / crop_pct)}
    elif crop_mode == "squash":
        size = {"height": math.floor(height / crop_pct), "width": math.floor(width / crop_pct)}
    else:
        raise ValueError(
            f"timm crop_mode={crop_mode!r} has no transformers image processor equivalent (supported: 'center', "
            "'squash'); pass an image processor for this model (image_processor=...)."
        )
    # the torchvision backend when installed (as transformers itself prefers), else the PIL one
    cls = getattr(transformers, "BitImageProcessorPil", None)
    if cls is None or is_torchvision_available():
        cls = transformers.BitImageProcessor
    return cls(
        do_resize=True,
        size=size,
        resample=PILImageResampling[interpolation.upper()],
        do_center_crop=True,
        crop_size={"height": height, "width": width},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[float(v) for v in data_config["mean"]],
        image_std=[float(v) for v in data_config["std"]],
        do_convert_rgb=True,
    )


def convert_timm_model(obj: nn.Module, with_image_processor: bool = True) -> tuple[nn.Module, object | None]:
    """(the equivalent transformers model, the image processor reproducing timm's eval transform) of a timm module
    or TimmWrapper model. The model is in eval mode iff `obj` is; its `name_or_path` is the Hub id when known (a
    TimmWrapper's `name_or_path`, a model built from an 'hf-hub:' name); its labels are the checkpoint's. `with_image_processor=False` skips the processor (returns None in its place)."""
    timm = require_timm()
    module, cfg = unwrap_timm(obj)
    name = type(module).__name__
    converter = TIMM_CONVERTERS.get(name)
    if converter is None:
        arch = cfg.get("architecture") or name
        raise ValueError(
            f"optimum-snp cannot convert the timm model {arch!r} (class {name}). Supported timm classes: "
            f"{', '.join(supported_timm_classes())}. Convert it to a supported transformers class yourself and pass "
            "the instance."
        )
    converted = converter(module)
    config = converted.config
    num_labels = config.num_labels if type(converted).__name__.endswith(("Classification", "WithTeacher")) else 0
    names = _label_names(timm, cfg, num_labels) if num_labels else None
    if names:
        _set_labels(config, names)
    # the Hub id only when the weights are known to come from there: every timm pretrained_cfg names a Hub id, even
    # for a randomly initialized model
    hub_id = getattr(obj, "name_or_path", None) if _is_timm_wrapper(obj) else None
    if not hub_id and cfg.get("source") == "hf-hub":  # built by timm.create_model("hf-hub:<repo>")
        hub_id = cfg.get("hf_hub_id")
    if hub_id:
        converted.name_or_path = str(hub_id)
    converted.train(obj.training)
    processor = None
    if with_image_processor:
        data_config = timm_data_config(obj)
        image_size = getattr(config, "image_size", None)
        if image_size is not None:  # the converted model's input size is the one its position embeddings take
            height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            data_config["input_size"] = (data_config["input_size"][0], int(height), int(width))
        processor = image_processor_from_timm(data_config)
    return converted, processor


# ---- sources (ids and folders) ------------------------------------------------------------------------------
def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _timm_folder_config(path: str) -> dict | None:
    """The config.json of a local folder in timm's format (`architecture`, no transformers `model_type`) or saved by
    transformers' TimmWrapper (`model_type: timm_wrapper`); None for any other folder."""
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        return None
    try:
        config = _read_json(file)
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or "architecture" not in config:
        return None
    return config if config.get("model_type") in (None, "timm_wrapper") else None


def is_timm_source(source: str | os.PathLike) -> bool:
    """True for `timm/<name>` and `hf-hub:<repo>` ids and for local folders holding a timm checkpoint (timm's Hub
    format or a TimmWrapper folder)."""
    source = os.fspath(source)
    if os.path.isdir(source):
        return _timm_folder_config(source) is not None
    return source.startswith(TIMM_HUB_PREFIXES)


def _load_wrapper(source: str, config: dict, **kwargs) -> nn.Module:
    """A TimmWrapper checkpoint saved by transformers (`timm_model.` weights), with its own class."""
    import transformers

    architectures = config.get("architectures") or []
    if architectures and architectures[0] in TIMM_WRAPPER_CLASSES:
        name = architectures[0]
    else:  # the classifier when the checkpoint has classes
        name = TIMM_WRAPPER_CLASSES[1 if config.get("num_classes") else 0]
    return getattr(transformers, name).from_pretrained(source, **kwargs)


def _load_timm_folder(timm, path: str, config: dict, **kwargs) -> nn.Module:
    """A local folder in timm's Hub format: the model built from `architecture` and `model_args`, its weights from
    `model.safetensors` (or `pytorch_model.bin`), with the folder's pretrained_cfg and label names."""
    for filename in ("model.safetensors", "pytorch_model.bin"):
        weights = os.path.join(path, filename)
        if os.path.isfile(weights):
            break
    else:
        raise ValueError(f"The timm folder {path!r} has no model.safetensors or pytorch_model.bin.")
    pretrained_cfg = dict(config.get("pretrained_cfg") or {})
    for key in ("label_names", "label_descriptions"):
        if key in config:
            pretrained_cfg[key] = config[key]
    if "num_classes" in config:
        pretrained_cfg["num_classes"] = config["num_classes"]
    for key in ("url", "hf_hub_id", "hf_hub_filename"):  # the weights come from the folder, nowhere else
        pretrained_cfg.pop(key, None)
    model_args = {**(config.get("model_args") or {}), **kwargs}
    if "num_classes" in config:
        model_args.setdefault("num_classes", config["num_classes"])
    return timm.create_model(
        config["architecture"],
        pretrained=True,
        pretrained_cfg_overlay=dict(pretrained_cfg, architecture=config["architecture"], file=weights),
        **model_args,
    )


def load_timm_source(
    source: str | os.PathLike, with_image_processor: bool = True, **kwargs
) -> tuple[nn.Module, object | None]:
    """(converted transformers model, image processor) of a `timm/<name>` / `hf-hub:<repo>` id, a local timm folder
    or a TimmWrapper folder / repo. `kwargs` go to `timm.create_model` (model arguments, `cache_dir`), or to
    `from_pretrained` for a TimmWrapper checkpoint. The model is in eval mode."""
    timm = require_timm()
    source = os.fspath(source)
    if os.path.isdir(source):
        config = _timm_folder_config(source)
        if config is None:
            raise ValueError(
                f"{source!r} is not a timm checkpoint folder: its config.json needs an 'architecture' entry (timm's "
                "Hub format, as written by timm.models.push_to_hf_hub / save_for_hf)."
            )
        if config.get("model_type") == "timm_wrapper":
            model = _load_wrapper(source, config, **kwargs)
        else:
            model = _load_timm_folder(timm, source, config, **kwargs)
        name = source
    else:
        repo = source[len("hf-hub:") :] if source.startswith("hf-hub:") else source
        config = None
        if not source.startswith(TIMM_HUB_PREFIXES):
            # a repo outside the timm organisation: timm's format, or a transformers TimmWrapper save
            from huggingface_hub import hf_hub_download

            config = _read_json(hf_hub_download(repo, "config.json"))
        try:
            if config is not None and config.get("model_type") == "timm_wrapper":
                model = _load_wrapper(repo, config, **kwargs)
            else:
                model = timm.create_model(f"hf-hub:{repo}", pretrained=True, **kwargs)
        except (OSError, RuntimeError) as err:
            raise ValueError(
                f"Could not load the timm model {source!r}: {err} Pass a timm Hub id ('timm/<name>'), a local timm "
                "folder, or a timm model instance."
            ) from err
        name = repo
    converted, processor = convert_timm_model(model.eval(), with_image_processor=with_image_processor)
    converted.name_or_path = name
    return converted, processor


__all__ = [
    "TIMM_CONVERTERS",
    "convert_timm_model",
    "image_processor_from_timm",
    "is_timm_model",
    "is_timm_source",
    "load_timm_source",
    "register_timm_converter",
    "require_timm",
    "supported_timm_classes",
    "timm_data_config",
    "unwrap_timm",
]
