"""Export of SNP-pruned (and stock) models to other runtimes: `export_onnx` (onnxruntime-validated)."""

from .onnx import (
    OnnxExportResult,
    OnnxValidationError,
    export_onnx,
    onnx_session,
    output_names_of,
    run_onnx,
    validate_onnx,
)


__all__ = [
    "OnnxExportResult",
    "OnnxValidationError",
    "export_onnx",
    "onnx_session",
    "output_names_of",
    "run_onnx",
    "validate_onnx",
]
