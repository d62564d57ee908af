"""ONNX export of SNP-pruned (and stock) ViT / DeiT models, validated with onnxruntime.

    >>> from optimum_snp.exporters import export_onnx
    >>> result = export_onnx("snp-output", "snp-onnx")  # a folder saved by SNPPruner, or a model instance
    >>> result.path, result.output_names, result.max_abs_diff  # ('/.../snp-onnx/model.onnx', ['logits'], 1.9e-06)

The model goes through PyTorch's `torch.export`-based exporter (`torch.onnx.export(..., dynamo=True)`, the default
since PyTorch 2.9; the TorchScript exporter is deprecated) with a dynamic batch axis. Attention is exported as eager
attention by default: plain MatMul/Softmax nodes that every ONNX runtime runs, including the per-layer head counts
and the value head dim that differs from the query/key head dim of pruned layers. `attn_implementation="sdpa"` with
`opset >= 23` emits the ONNX `Attention` operator instead (onnxruntime >= 1.23 on CPU); it measured no faster on
CPU, and under SDPA on CPU an SNP model zero-pads the narrower of its q/k and v dims (a PyTorch kernel workaround)
that the graph would then carry. The output folder is written atomically (temporary folder, then rename) and only after onnxruntime reproduced
the PyTorch outputs within `atol`.

`quantize="dynamic"` (CLI `--quantize dynamic`) also writes `model_quantized.onnx` (optimum's name) next to the float
`model.onnx`: onnxruntime's dynamic quantization (`quantize_dynamic`) with int8 weights, one scale per output channel,
on the MatMul nodes (every linear layer; activations are quantized to uint8 at run time). The int8 model is not held
to `atol`: it is checked against the float ONNX model on real inputs, by the fraction of argmax (top-1) agreement,
and with `validation_dataset=` by the top-1 of both on that labelled split; its largest logit error relative to the
float logits is reported, not failed on (`min_int8_agreement` makes the agreement a gate).

Command line: `optimum-cli snp export onnx --model DIR --output DIR`, or `python -m optimum_snp export onnx ...`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from ..utils import atomic_directory, check_output_dir


ONNX_NAME = "model.onnx"
QUANTIZED_NAME = "model_quantized.onnx"  # optimum's name for the int8 model beside the float one
QUANTIZE_MODES = ("dynamic",)
# The int8 recipe, chosen by measurement (README, ONNX section): int8 weights (QInt8: onnxruntime's u8s8 kernels, the
# VNNI path; QUInt8 weights ran 1.0x-1.2x against 1.8x-2.1x on DeiT-S), per output channel (same speed, lower logit
# error), MatMul only (Conv, i.e. the patch embedding, made it slower), and reduce_range (7-bit weights): on AVX2 CPUs
# without VNNI the u8s8 kernels add pairs of 8-bit products in saturating int16, and full-range per-channel weights
# overflow it (measured on an AMD EPYC, AVX2, no VNNI: the test ViT's largest logit error 44% of its largest logit
# without reduce_range, 4% with it); on a VNNI CPU it changed neither speed nor error (README, ONNX section).
QUANTIZE_OPTIONS = dict(op_types_to_quantize=["MatMul"], per_channel=True, reduce_range=True)
INT8_CHECK_BATCHES = (8, 8, 8, 8)  # example inputs the int8 model is compared on when no dataset is given
DEFAULT_OPSET = 20  # the first opset with a Gelu operator (onnxruntime fuses it with its bias)
MIN_OPSET = 18  # the lowest opset the torch.export-based exporter implements without a lossy version conversion
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
EXPORT_BATCH_SIZE = 2  # the example batch of the export; validation uses other sizes to prove the axis is dynamic
# files copied from a source folder so that the ONNX folder describes itself (labels, preprocessing, pruning)
SIDE_FILES = (
    "config.json",
    "preprocessor_config.json",
    "snp_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
)
# graphs above protobuf's 2 GB limit keep their weights in `model.onnx.data`
EXTERNAL_DATA_BYTES = 1_800_000_000
logger = logging.getLogger(__name__)
INSTALL_HINT = "pip install 'optimum-snp[onnx]' (or: pip install onnx onnxscript onnxruntime)"


class OnnxValidationError(ValueError):
    """onnxruntime's outputs differ from PyTorch's by more than `atol` (or the int8 model agrees with the float one
    less than `min_int8_agreement`); nothing was written."""


@dataclass
class OnnxExportResult:
    """What `export_onnx` wrote and how well onnxruntime reproduced PyTorch."""

    path: str
    output_dir: str
    opset: int
    input_names: list[str]
    output_names: list[str]
    attn_implementation: str
    max_abs_diff: float | None  # None when not validated
    atol: float
    validated_batch_sizes: tuple[int, ...] = ()
    max_abs_diff_per_output: dict[str, float] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    # quantize="dynamic": the int8 model and how it compares with the float ONNX model (None when not quantized)
    quantize: str | None = None
    int8_path: str | None = None
    float_bytes: int | None = None  # size of model.onnx (with its external data)
    int8_bytes: int | None = None
    int8_checked_on: str | None = None  # "validation_dataset" or "example inputs"; None when not validated
    int8_num_samples: int | None = None  # inputs the agreement was measured on
    int8_agreement: float | None = None  # fraction of them with the same argmax (None without a logits output)
    int8_max_rel_error: float | None = None  # max |int8 - float| / max |float| over the example inputs
    float_top1: float | None = None  # top-1 of model.onnx on validation_dataset
    int8_top1: float | None = None  # top-1 of model_quantized.onnx on validation_dataset

    def to_dict(self) -> dict:
        return asdict(self)


class _ExportWrapper(nn.Module):
    """The model's inputs (positional, in `input_names` order) -> a tuple of the named output tensors (ModelOutput
    dataclasses are not ONNX outputs)."""

    def __init__(self, model: nn.Module, input_names: list[str], output_names: list[str]):
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.output_names = output_names
        self.train(model.training)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(**dict(zip(self.input_names, inputs, strict=True)), return_dict=True)
        return tuple(outputs[name] for name in self.output_names)


# ---- checks --------------------------------------------------------------------------------------------------
def _import(name: str, purpose: str):
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ImportError(f"{purpose} needs the `{name}` package, which is not installed: {INSTALL_HINT}.") from err


def _check_options(opset, atol, attn_implementation, batch_sizes) -> None:
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(
            f"opset must be an integer >= {MIN_OPSET} (the torch.export-based exporter's lowest), got {opset!r}; "
            f"the default is {DEFAULT_OPSET}."
        )
    if not isinstance(atol, (int, float)) or isinstance(atol, bool) or not atol >= 0:
        raise ValueError(f"atol must be a number >= 0, got {atol!r}.")
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation must be one of {list(ATTN_IMPLEMENTATIONS)}, got {attn_implementation!r} "
            "('eager': MatMul/Softmax nodes, runs everywhere; 'sdpa' with opset >= 23: the ONNX Attention operator)."
        )
    if not batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be positive integers, got {batch_sizes!r}.")


def _check_quantize_options(quantize, validate, validation_dataset, min_int8_agreement) -> None:
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ValueError(
            f"quantize must be None (float model only) or 'dynamic' (also write an int8 {QUANTIZED_NAME} with "
            f"onnxruntime's dynamic quantization), got {quantize!r}."
        )
    if min_int8_agreement is not None and (
        isinstance(min_int8_agreement, bool)
        or not isinstance(min_int8_agreement, (int, float))
        or not 0 <= min_int8_agreement <= 1
    ):
        raise ValueError(f"min_int8_agreement must be a number in [0, 1] or None, got {min_int8_agreement!r}.")
    if quantize is None and (validation_dataset is not None or min_int8_agreement is not None):
        raise ValueError(
            "validation_dataset and min_int8_agreement check the int8 model; pass quantize='dynamic' with them."
        )
    if not validate and (validation_dataset is not None or min_int8_agreement is not None):
        raise ValueError("validation_dataset and min_int8_agreement need validate=True.")


def _load_model(source: str) -> nn.Module:
    from ..pruner import load_model

    return load_model(source)


def _adapter(model: nn.Module):
    from ..adapters import get_adapter, supported_model_classes

    try:
        return get_adapter(model)
    except ValueError:
        raise ValueError(
            f"ONNX export supports the models optimum-snp prunes (stock and SNP-pruned), not {type(model).__name__} "
            f"(model_type={getattr(getattr(model, 'config', None), 'model_type', None)!r}). Supported classes: "
            f"{', '.join(supported_model_classes())}."
        ) from None


def output_names_of(model: nn.Module) -> list[str]:
    """The ONNX outputs of a supported model class (ValueError for any other class)."""
    return _adapter(model).onnx_output_names()


class _ExportMode:
    """eval(), the requested attention implementation and no grad while exporting; restores the model afterwards."""

    def __init__(self, model: nn.Module, attn_implementation: str):
        self.model = model
        self.attn_implementation = attn_implementation

    def __enter__(self):
        self.training = self.model.training
        self.previous_attn = getattr(self.model.config, "_attn_implementation", None)
        self.model.eval()
        if self.previous_attn != self.attn_implementation:
            self.model.set_attn_implementation(self.attn_implementation)
        return self

    def __exit__(self, *exc):
        if self.previous_attn is not None and self.previous_attn != self.attn_implementation:
            self.model.set_attn_implementation(self.previous_attn)
        self.model.train(self.training)


# ---- export and validation -----------------------------------------------------------------------------------
def _torch_export(model: nn.Module, path: str, output_names: list[str], opset: int) -> None:
    """Writes `model` (an `_ExportWrapper`) to `path` with a dynamic batch axis."""
    adapter = _adapter(model.model)
    example = adapter.onnx_inputs(EXPORT_BATCH_SIZE)
    dims: dict[str, torch.export.Dim] = {}
    dynamic = {
        name: {axis: dims.setdefault(label, torch.export.Dim(label)) for axis, label in axes.items()}
        for name, axes in adapter.onnx_dynamic_axes().items()
    }
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    # torch.onnx logs that it skips torchvision's operators when torchvision is not installed: not our concern
    registry_logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_logger.level
    registry_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # internal deprecation notices of torch.export / pytree, not actionable by the user
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                tuple(example.values()),
                path,
                input_names=list(example),
                output_names=output_names,
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=(tuple(dynamic[name] for name in example),),  # forward(*inputs): one varargs tuple
                external_data=size > EXTERNAL_DATA_BYTES,
                optimize=True,
                verbose=False,
            )
    finally:
        registry_logger.setLevel(level)


def onnx_session(path: str | os.PathLike, num_threads: int | None = None, providers: list[str] | None = None):
    """An onnxruntime `InferenceSession` of `path` (a `.onnx` file or a folder holding `model.onnx`), on the CPU
    unless `providers` says otherwise; `num_threads` sets the intra-op threads (default: onnxruntime's)."""
    ort = _import("onnxruntime", "Running an ONNX model")
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, ONNX_NAME)
    if not os.path.isfile(path):
        raise ValueError(f"No ONNX model at {path!r}; export one with export_onnx (optimum-cli snp export onnx).")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: onnxruntime warns about benign graph details
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
    try:
        return ort.InferenceSession(path, options, providers=providers or ["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own exception types (e.g. for an opset it does not implement)
        raise ValueError(
            f"onnxruntime {ort.__version__} could not load {path!r}: {err} If it names an opset or operator, "
            f"export with a lower opset (default {DEFAULT_OPSET})."
        ) from err


def run_onnx(session, inputs) -> dict:
    """{output name: numpy array} of an onnxruntime session on `inputs`: a dict of model inputs (tensors or arrays),
    or the main input alone (e.g. `pixel_values`)."""
    if not isinstance(inputs, dict):
        inputs = {session.get_inputs()[0].name: inputs}
    feed = {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    outputs = session.run(None, feed)
    return {o.name: value for o, value in zip(session.get_outputs(), outputs, strict=True)}


def validate_onnx(
    path: str | os.PathLike,
    model: nn.Module,
    batch_sizes: tuple[int, ...] = (1, 3),
    atol: float = 1e-4,
    attn_implementation: str | None = None,
    seed: int = 1,
) -> dict[str, float]:
    """Runs the ONNX model at `path` and `model` on the same random inputs, one batch per size in `batch_sizes`.

    Returns the max abs difference per output; raises `OnnxValidationError` when one exceeds `atol`.
    `attn_implementation` (default: the model's own) is used for the PyTorch reference.
    """
    adapter = _adapter(model)
    output_names = output_names_of(model)
    session = onnx_session(path)
    missing = [name for name in output_names if name not in {o.name for o in session.get_outputs()}]
    if missing:
        raise OnnxValidationError(f"The ONNX model at {os.fspath(path)!r} has no output(s) {missing}.")
    wrapper = _ExportWrapper(model, adapter.input_names, output_names)
    diffs = dict.fromkeys(output_names, 0.0)
    with _ExportMode(model, attn_implementation or model.config._attn_implementation), torch.no_grad():
        for i, batch_size in enumerate(batch_sizes):
            inputs = adapter.onnx_inputs(batch_size, seed=seed + i, variant=i)
            expected = wrapper(*inputs.values())
            got = run_onnx(session, inputs)
            for name, reference in zip(output_names, expected, strict=True):
                if got[name].shape != tuple(reference.shape):
                    raise OnnxValidationError(
                        f"ONNX output {name!r} has shape {got[name].shape} at batch size {batch_size}, PyTorch "
                        f"{tuple(reference.shape)}."
                    )
                diff = float((torch.from_numpy(got[name]) - reference).abs().max())
                diffs[name] = max(diffs[name], diff if diff == diff else float("inf"))  # NaN counts as a failure
    worst = max(diffs, key=diffs.get)
    if diffs[worst] > atol:
        raise OnnxValidationError(
            f"onnxruntime and PyTorch differ by up to {diffs[worst]:.3g} in {worst!r} (batch sizes {list(batch_sizes)}), "
            f"above atol={atol:g}; nothing was written. Pass a larger atol (CLI: --atol) if that is acceptable, or "
            "try the other attn_implementation."
        )
    return diffs


# ---- int8: dynamic quantization and its check against the float model -------------------------------------------
@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Drops onnxruntime's root-logger advice to run `quant_pre_process` (measured: no gain here), without letting
    `logging.warning` configure the user's root logger as a side effect."""
    root = logging.getLogger()
    handler = logging.NullHandler() if not root.handlers else None

    def drop(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider to run pre-processing")

    if handler is not None:
        root.addHandler(handler)
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
        if handler is not None:
            root.removeHandler(handler)


def quantize_dynamic_onnx(path: str | os.PathLike, output_path: str | os.PathLike) -> None:
    """Writes the int8 version of the float ONNX model at `path` to `output_path` with onnxruntime's
    `quantize_dynamic` and this package's recipe (`QUANTIZE_OPTIONS`: int8 per-channel weights on every MatMul)."""
    quantization = _import("onnxruntime.quantization", "Quantizing the ONNX model (quantize='dynamic')")
    path, output_path = os.fspath(path), os.fspath(output_path)
    external = _model_bytes(path) > os.path.getsize(path)  # the weights lie in external data files
    with _quiet_quantizer():
        quantization.quantize_dynamic(
            path,
            output_path,
            weight_type=quantization.QuantType.QInt8,
            use_external_data_format=external,
            **QUANTIZE_OPTIONS,
        )


def _model_bytes(path: str) -> int:
    """Size of an ONNX file and its external data files (`<name>.data...`)."""
    folder, name = os.path.split(path)
    return sum(
        os.path.getsize(os.path.join(folder, f))
        for f in os.listdir(folder or ".")
        if f == name or f.startswith(name + ".")
    )


def _logit_names(output_names: list[str]) -> list[str]:
    """The outputs whose argmax is a prediction: 'logits' (also of DeiT with teacher), else start/end logits."""
    return ["logits"] if "logits" in output_names else [name for name in output_names if name.endswith("logits")]


class _OnnxClassifier(nn.Module):
    """An onnxruntime image classifier that `evaluate_accuracy` can score (returns `.logits`); keeps its argmaxes."""

    def __init__(self, session, config):
        super().__init__()
        self.session = session
        self.config = config
        self.predictions: list[np.ndarray] = []

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        logits = run_onnx(self.session, {"pixel_values": pixel_values})["logits"]
        self.predictions.append(logits.argmax(-1))
        return SimpleNamespace(logits=torch.from_numpy(logits))


def validate_quantized(
    float_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    model: nn.Module,
    validation_dataset=None,
    image_processor=None,
    min_agreement: float | None = None,
    split: str = "test",
    label_column: str = "label",
    seed: int = 11,
) -> dict:
    """Compares the int8 ONNX model at `int8_path` with the float one at `float_path` (max abs diff is not the test:
    int8 logits move by a few percent, what matters is whether the predictions do).

    On the exporter's example inputs for `model` (`INT8_CHECK_BATCHES`, random images or token ids): "max_rel_error",
    max |int8 - float| / max |float| over every output, and (without a dataset) "agreement", the fraction of inputs
    (tokens, for token-level logits) whose argmax matches; None when the model has no logits output.
    With `validation_dataset` (a labelled image-classification split, anything `evaluate_accuracy` accepts, read with
    `image_processor`): "agreement" on that split instead, and "float_top1" / "int8_top1".
    Raises `OnnxValidationError` when `min_agreement` is given and the agreement is below it.
    Returns {"checked_on", "num_samples", "agreement", "max_rel_error", "float_top1", "int8_top1"}.
    """
    adapter = _adapter(model)
    output_names = output_names_of(model)
    logit_names = _logit_names(output_names)
    float_session, int8_session = onnx_session(float_path), onnx_session(int8_path)
    result = {"checked_on": "example inputs", "num_samples": 0, "agreement": None, "max_rel_error": 0.0}
    result.update(float_top1=None, int8_top1=None)
    matches = total = 0
    max_diff = dict.fromkeys(output_names, 0.0)
    max_ref = dict.fromkeys(output_names, 0.0)
    for i, batch_size in enumerate(INT8_CHECK_BATCHES):
        inputs = adapter.onnx_inputs(batch_size, seed=seed + i, variant=i)
        reference, got = run_onnx(float_session, inputs), run_onnx(int8_session, inputs)
        for name in output_names:
            diff = float(np.abs(got[name] - reference[name]).max())
            max_diff[name] = max(max_diff[name], diff if diff == diff else float("inf"))
            max_ref[name] = max(max_ref[name], float(np.abs(reference[name]).max()))
        for name in logit_names:
            same = got[name].argmax(-1) == reference[name].argmax(-1)
            mask = inputs.get("attention_mask")
            if same.ndim == 2 and mask is not None and tuple(mask.shape) == same.shape:  # token-level logits
                same = same[mask.numpy().astype(bool)]
            matches, total = matches + int(same.sum()), total + same.size
        result["num_samples"] += batch_size
    result["max_rel_error"] = max(max_diff[n] / max_ref[n] if max_ref[n] else max_diff[n] for n in output_names)
    if total:
        result["agreement"] = matches / total

    if validation_dataset is not None:
        from ..evaluation import evaluate_accuracy

        scores = {}
        classifiers = {}
        for kind, session in (("float", float_session), ("int8", int8_session)):
            classifiers[kind] = _OnnxClassifier(session, model.config)
            scores[kind] = evaluate_accuracy(
                classifiers[kind],
                validation_dataset,
                image_processor,
                split=split,
                label_column=label_column,
                show_progress=False,
            )
        predictions = {kind: np.concatenate(c.predictions) for kind, c in classifiers.items()}
        result.update(
            checked_on="validation_dataset",
            num_samples=scores["int8"]["num_samples"],
            agreement=float((predictions["float"] == predictions["int8"]).mean()),
            float_top1=scores["float"]["top1"],
            int8_top1=scores["int8"]["top1"],
        )
    if min_agreement is not None and (result["agreement"] is None or result["agreement"] < min_agreement):
        shown = "no logits output" if result["agreement"] is None else f"{result['agreement']:.2%}"
        raise OnnxValidationError(
            f"The int8 model agrees with the float model on {shown} of {result['num_samples']} "
            f"{'validation examples' if validation_dataset is not None else 'example inputs'}, below "
            f"min_int8_agreement={min_agreement:g}; nothing was written. Export without quantize, or lower "
            "min_int8_agreement if that is acceptable."
        )
    return result


def _copy_side_files(tmp: str, model: nn.Module, source: str | None, image_processor) -> None:
    if source is not None and os.path.isdir(source):
        for name in SIDE_FILES:
            if os.path.isfile(os.path.join(source, name)):
                shutil.copy2(os.path.join(source, name), os.path.join(tmp, name))
    if not os.path.isfile(os.path.join(tmp, "config.json")):
        model.config.to_json_file(os.path.join(tmp, "config.json"))  # not save_pretrained: no modeling code here
    if image_processor is not None:
        image_processor.save_pretrained(tmp)
    elif source is not None and not os.path.isdir(source):  # a Hub id: its preprocessor when it has one
        try:
            _adapter(model).load_preprocessor(source).save_pretrained(tmp)
        except (OSError, ValueError) as err:
            logger.warning("No preprocessor saved next to the ONNX model: %s", err)


def export_onnx(
    model_or_path: nn.Module | str | os.PathLike,
    output: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    attn_implementation: str = "eager",
    validate: bool = True,
    atol: float = 1e-4,
    batch_sizes: tuple[int, ...] = (1, 3),
    overwrite: bool = False,
    image_processor=None,
    quantize: str | None = None,
    validation_dataset=None,
    min_int8_agreement: float | None = None,
) -> OnnxExportResult:
    """Exports a model optimum-snp supports (stock or SNP-pruned; image or text) to `output/model.onnx`, with a
    dynamic batch axis (and a dynamic sequence axis for text models).

    Args:
        model_or_path: a model instance, or a folder / Hub id (loaded with the Auto class of the class its config
            names, after `import optimum_snp`, so pruned checkpoints load too).
        output: the folder to write: `model.onnx`, plus `config.json` and, from a source folder,
            `preprocessor_config.json` and `snp_config.json`, so that the folder describes itself.
        opset: ONNX opset (>= 18).
        attn_implementation: 'eager' (default; MatMul/Softmax nodes) or 'sdpa' (the ONNX Attention operator
            from opset 23 on). The model's own setting is restored afterwards.
        validate: run the ONNX model with onnxruntime at every size of `batch_sizes` (which differ from the export
            batch of 2, so the dynamic batch axis is checked too) and compare with PyTorch.
        atol: largest accepted absolute difference of any output; above it `OnnxValidationError` is raised.
        overwrite: replace a non-empty `output` folder.
        image_processor: saved next to the model (default: the source folder's `preprocessor_config.json`); also
            reads `validation_dataset`.
        quantize: None (the float model only) or 'dynamic': also write `model_quantized.onnx`, int8 weights on
            every MatMul (onnxruntime `quantize_dynamic`, per-channel, `QUANTIZE_OPTIONS`). With `validate`, it is
            compared with the float ONNX model (`validate_quantized`): argmax agreement and max relative logit error
            on example inputs, stored in the result's `int8_*` fields.
        validation_dataset: a labelled image-classification split (e.g. `digits_dataset()["test"]`; anything
            `evaluate_accuracy` accepts, a `DatasetDict`'s 'test' split) on which the agreement and the top-1 of
            the float and int8 models are measured instead (`float_top1`, `int8_top1`); needs `quantize` and an
            image processor (`image_processor`, or the source folder's).
        min_int8_agreement: when given, an agreement below it raises `OnnxValidationError` (nothing written);
            by default the int8 numbers are reported, not failed on.

    Returns an `OnnxExportResult`. On any error nothing is left in `output`.
    """
    _check_options(opset, atol, attn_implementation, batch_sizes)
    _check_quantize_options(quantize, validate, validation_dataset, min_int8_agreement)
    if isinstance(model_or_path, nn.Module):
        source = None
    elif isinstance(model_or_path, (str, os.PathLike)):
        source = os.fspath(model_or_path)
    else:
        raise ValueError(
            f"model_or_path must be a model instance, a folder or a Hub id, got {type(model_or_path).__name__}."
        )
    target = check_output_dir(output, overwrite, source=source, name="output")
    _import("onnxscript", "ONNX export")  # torch.onnx's exporter imports both lazily; fail before any work
    _import("onnx", "ONNX export")
    if validate:
        _import("onnxruntime", "Validating the ONNX export (validate=True)")
    if quantize is not None:
        _import("onnxruntime", f"Quantizing the ONNX model (quantize={quantize!r})")
    model = model_or_path if source is None else _load_model(source)
    output_names = output_names_of(model)
    parameter = next(model.parameters(), None)
    if parameter is not None and (parameter.dtype != torch.float32 or parameter.device.type != "cpu"):
        raise ValueError(
            f"The model is {parameter.dtype} on {parameter.device}; export a float32 CPU model (model.float().cpu())."
        )
    eval_processor = image_processor
    if validation_dataset is not None:
        adapter = _adapter(model)
        if adapter.modality != "image" or "logits" not in output_names:
            raise ValueError(
                f"validation_dataset measures top-1 of an image classifier; {type(model).__name__} has outputs "
                f"{output_names}. Leave it out: the int8 model is then compared with the float one on example inputs."
            )
        if eval_processor is None and source is not None:
            eval_processor = adapter.load_preprocessor(source)
        if eval_processor is None:
            raise ValueError(
                "validation_dataset needs the model's image processor to read its images: pass image_processor=... "
                "(e.g. AutoImageProcessor.from_pretrained(<model folder>))."
            )

    with atomic_directory(target, prefix=".snp-onnx-tmp-") as tmp:
        path = os.path.join(tmp, ONNX_NAME)
        with _ExportMode(model, attn_implementation):
            wrapper = _ExportWrapper(model, _adapter(model).input_names, output_names)
            _torch_export(wrapper, path, output_names, opset)
        diffs = (
            validate_onnx(path, model, batch_sizes, atol, attn_implementation=attn_implementation) if validate else {}
        )
        int8 = {}
        if quantize is not None:
            int8_path = os.path.join(tmp, QUANTIZED_NAME)
            quantize_dynamic_onnx(path, int8_path)
            int8 = {"float_bytes": _model_bytes(path), "int8_bytes": _model_bytes(int8_path)}
            if validate:
                check = validate_quantized(
                    path, int8_path, model, validation_dataset, eval_processor, min_agreement=min_int8_agreement
                )
                int8.update(
                    int8_checked_on=check["checked_on"],
                    int8_num_samples=check["num_samples"],
                    int8_agreement=check["agreement"],
                    int8_max_rel_error=check["max_rel_error"],
                    float_top1=check["float_top1"],
                    int8_top1=check["int8_top1"],
                )
        _copy_side_files(tmp, model, source, image_processor)
        files = sorted(os.listdir(tmp))
    if quantize is not None:
        int8.update(quantize=quantize, int8_path=os.path.join(target, QUANTIZED_NAME))
    return OnnxExportResult(
        path=os.path.join(target, ONNX_NAME),
        output_dir=target,
        opset=opset,
        input_names=_adapter(model).input_names,
        output_names=output_names,
        attn_implementation=attn_implementation,
        max_abs_diff=max(diffs.values()) if diffs else None,
        atol=atol,
        validated_batch_sizes=tuple(batch_sizes) if validate else (),
        max_abs_diff_per_output=diffs,
        files=files,
        **int8,
    )


__all__ = [
    "OnnxExportResult",
    "OnnxValidationError",
    "export_onnx",
    "onnx_session",
    "output_names_of",
    "quantize_dynamic_onnx",
    "run_onnx",
    "validate_onnx",
    "validate_quantized",
]
