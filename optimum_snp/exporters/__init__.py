"""Export of SNP-pruned (and stock) ViT / DeiT models to other runtimes: `export_onnx` (onnxruntime-validated)."""

from typing import TYPE_CHECKING


__all__ = [
    "OnnxExportResult",
    "OnnxValidationError",
    "export_onnx",
    "onnx_session",
    "output_names_of",
    "run_onnx",
    "validate_onnx",
]

if TYPE_CHECKING:
    from .onnx import (
        OnnxExportResult,
        OnnxValidationError,
        export_onnx,
        onnx_session,
        output_names_of,
        run_onnx,
        validate_onnx,
    )


def __getattr__(name: str):
    # Resolved on first use rather than imported here, so that `python -m optimum_snp.exporters.onnx` runs the
    # module once (an eager import would make runpy warn that it is already in sys.modules).
    if name in __all__:
        from . import onnx

        return getattr(onnx, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
