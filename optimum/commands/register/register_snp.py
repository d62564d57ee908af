"""Registers `optimum-cli snp prune` and `optimum-cli snp export onnx` (this folder is a PEP 420 namespace: no
__init__.py).

Kept light: the heavy imports (torch, transformers, optimum_snp) happen inside `run()`.
"""

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo


def _ridge(text: str):
    return text if text == "cv" else float(text)


def add_prune_arguments(parser) -> None:
    """Options of `optimum-cli snp prune` and `snp-prune` (the same parser for both)."""
    parser.add_argument(
        "--model",
        "-m",
        default=None,
        help="Hub id or local folder of a ViT/DeiT image model or a BERT/RoBERTa/DistilBERT text encoder (or an SNP "
        "model). Default: the embedded digits ViT, "
        "trained on first use from scikit-learn's digits (no network needed).",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help="Calibration data: a dataset name, a local folder of images (imagefolder) or a save_to_disk folder. "
        "Default with the embedded model: the digits train split.",
    )
    parser.add_argument("--split", default="train", help="Split of --dataset used for calibration.")
    parser.add_argument("--eval-split", default=None, help="Split to report top-1 on before/after (needs labels).")
    parser.add_argument("--image-column", default=None, help="Image column (default: pixel_values, image or img).")
    parser.add_argument(
        "--text-column", default=None, help="Text column of a text dataset (default: text, sentence...)."
    )
    parser.add_argument("--text-pair-column", default=None, help="Second text column, for text-pair models.")
    parser.add_argument("--max-length", type=int, default=128, help="Tokens per calibration text at most.")
    parser.add_argument("--label-column", default="label", help="Label column for --eval-split.")
    parser.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help="Number of calibration images or texts. Default: the architecture's (64 images, 1024 texts).",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="Calibration batch size.")
    ratios = parser.add_argument_group("how much to prune (fraction REMOVED, or a MACs target)")
    for name, what in (
        ("qk", "query/key dims per head"),
        ("v", "value dims per head"),
        ("mlp", "MLP units"),
        ("head", "whole heads"),
    ):
        ratios.add_argument(
            f"--{name}-ratio",
            type=float,
            nargs="+",
            default=None,
            help=f"Fraction of {what} removed: one value, or one per layer.",
        )
    ratios.add_argument("--hidden-ratio", type=float, default=None, help="Fraction of hidden channels removed.")
    ratios.add_argument(
        "--ratio-table", default=None, help="Authors' table: DeiT_t, DeiT_s, DeiT_s_small, DeiT_b or a path."
    )
    ratios.add_argument("--target-macs", type=float, default=None, help="Absolute MACs per image to reach.")
    ratios.add_argument(
        "--target-macs-ratio",
        type=float,
        default=None,
        help="Fraction of the original MACs to KEEP (automatic allocation). Default with no ratio given: 0.5.",
    )
    parser.add_argument(
        "--criterion",
        default="snp",
        help="'snp', 'magnitude', 'random', or per group, e.g. 'qk=svd,v=redundancy,mlp=magnitude'.",
    )
    parser.add_argument(
        "--round-to",
        type=int,
        default=None,
        help="Keep q/k and v dims per head, MLP units and hidden channels at multiples of this (1: exactly as the "
        "ratios say). Default: multiples of 8 for groups of at least 64 units (what this CPU runs fastest).",
    )
    parser.add_argument(
        "--reconstruct",
        choices=["least_squares", "bias", "none"],
        default="least_squares",
        help="Refit after the cut on the calibration images: least squares (default), bias compensation, or none.",
    )
    parser.add_argument(
        "--ridge",
        type=_ridge,
        default=None,
        help="Ridge of the least-squares refit (relative), or 'cv' (chosen per projection by cross-validation). "
        "Default: the architecture's (1e-3 ViT/DeiT, 0.3 text).",
    )
    parser.add_argument(
        "--refit-target",
        choices=["output", "residual"],
        default=None,
        help="What the least-squares refit matches: each projection's output, or its sum with the residual stream. "
        "Default: the architecture's (output for ViT/DeiT, residual for text encoders).",
    )
    parser.add_argument(
        "--allocation",
        choices=["validated", "scores", "uniform", "sensitivity"],
        default="validated",
        help="How a MACs target is split over layers and groups (default: validated candidates on held-out samples).",
    )
    parser.add_argument(
        "--sensitivity-candidate",
        choices=["on", "off"],
        default=None,
        help="Whether the validated allocation also tries the measured per-layer loss curves ('sensitivity': 12 "
        "one-layer cuts per layer, minutes for a base-size model on a CPU). Default: the architecture's (on for "
        "ViT/DeiT and text encoders).",
    )
    parser.add_argument("--qk-rank", type=int, default=4, help="Singular triplets of the 'svd' query/key criteria.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the calibration sampling and of 'random'.")
    tune = parser.add_argument_group("fine-tuning with distillation from the source model (teacher)")
    tune.add_argument(
        "--finetune-epochs",
        type=float,
        default=None,
        help="Epochs of distillation fine-tuning after pruning (0: none). Default: 5 for the embedded model, else 0.",
    )
    tune.add_argument("--learning-rate", type=float, default=1e-3, help="Fine-tuning learning rate.")
    tune.add_argument(
        "--distillation",
        default="soft",
        choices=["soft", "hard", "none"],
        help="Distillation loss (teacher: --model).",
    )
    tune.add_argument("--finetune-split", default=None, help="Split of --dataset to fine-tune on (default: --split).")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="Also upload the result to this repo.")
    parser.add_argument("--output-dir", "-o", default="snp-output", help="Where the pruned model is saved.")
    parser.add_argument("--overwrite", action="store_true", help="Replace a non-empty --output-dir.")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars.")


def add_export_onnx_arguments(parser) -> None:
    """Options of `optimum-cli snp export onnx` and `python -m optimum_snp export onnx`."""
    parser.add_argument(
        "--model",
        "-m",
        required=True,
        help="Folder saved by `optimum-cli snp prune` / save_pretrained (SNP-pruned or stock ViT/DeiT), or a Hub id.",
    )
    parser.add_argument("--output", "-o", required=True, help="Folder to write model.onnx (and the configs) into.")
    parser.add_argument("--opset", type=int, default=20, help="ONNX opset (>= 18). Default: 20.")
    parser.add_argument(
        "--attn-implementation",
        default="eager",
        choices=["eager", "sdpa"],
        help="Attention as MatMul/Softmax nodes ('eager', default) or, with --opset 23 or more, the ONNX Attention "
        "operator ('sdpa').",
    )
    parser.add_argument(
        "--atol",
        type=float,
        default=1e-4,
        help="Largest accepted abs difference between onnxruntime and PyTorch outputs. Default: 1e-4.",
    )
    parser.add_argument("--no-validate", action="store_true", help="Skip the onnxruntime check.")
    parser.add_argument("--overwrite", action="store_true", help="Replace a non-empty --output folder.")
    parser.add_argument(
        "--quantize",
        default=None,
        choices=["dynamic"],
        help="Also write model_quantized.onnx: int8 weights on every MatMul (onnxruntime dynamic quantization, "
        "per channel), compared with the float model (top-1 agreement, max relative logit error).",
    )


class SNPPruneCommand(BaseOptimumCLICommand):
    @staticmethod
    def parse_args(parser) -> None:
        add_prune_arguments(parser)

    def run(self):
        from optimum_snp.cli import run_prune

        status = run_prune(self.args)
        if status:
            raise SystemExit(status)


class SNPExportOnnxCommand(BaseOptimumCLICommand):
    @staticmethod
    def parse_args(parser) -> None:
        add_export_onnx_arguments(parser)

    def run(self):
        from optimum_snp.cli import run_export_onnx

        status = run_export_onnx(self.args)
        if status:
            raise SystemExit(status)


class SNPExportCommand(BaseOptimumCLICommand):
    """`optimum-cli snp export`: a group; `onnx` is its only format so far."""

    SUBCOMMANDS = (
        CommandInfo(
            name="onnx",
            help="Export an SNP-pruned (or stock) ViT/DeiT to ONNX, validated with onnxruntime.",
            subcommand_class=SNPExportOnnxCommand,
        ),
    )


class SNPCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(name="snp", help="SNP structured pruning of ViT/DeiT models.")
    SUBCOMMANDS = (
        CommandInfo(
            name="prune",
            help="Prune a ViT/DeiT with SNP (calibrate, score, allocate, slice, save).",
            subcommand_class=SNPPruneCommand,
        ),
        CommandInfo(
            name="export",
            help="Export a pruned model to another format (onnx).",
            subcommand_class=SNPExportCommand,
        ),
    )


REGISTER_COMMANDS = [SNPCommand]
