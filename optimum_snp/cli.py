"""`snp-prune` (and `optimum-cli snp prune`): prune a model from the command line.

Without `--model` it runs the embedded default: the digits ViT (trained on first use), calibrated on the digits
train split, pruned to half its MACs, evaluated before and after on the digits test split.
"""

from __future__ import annotations

import argparse
import sys


def parse_criterion(text: str) -> str | dict:
    """'snp' / 'magnitude' / 'random', or 'qk=svd,v=redundancy' -> dict."""
    if "=" not in text:
        return text
    criterion = {}
    for part in text.split(","):
        group, sep, name = part.partition("=")
        if not sep or not group.strip() or not name.strip():
            raise ValueError(f"Cannot read criterion {text!r}; write e.g. 'qk=svd,v=contribution'.")
        criterion[group.strip()] = name.strip()
    return criterion


def _ratio(values):
    if values is None:
        return 0.0
    return values[0] if len(values) == 1 else list(values)


def config_from_args(args):
    from .config import SNPConfig

    common = dict(
        criterion=parse_criterion(args.criterion),
        qk_rank=args.qk_rank,
        round_to=args.round_to,
        reconstruct=args.reconstruct,
        ridge=args.ridge,
        refit_target=getattr(args, "refit_target", None),
        allocation=getattr(args, "allocation", "validated"),
        sensitivity_candidate={"on": True, "off": False}.get(getattr(args, "sensitivity_candidate", None)),
        num_calibration_samples=args.num_samples,
        batch_size=args.batch_size,
        seed=args.seed,
        image_column=args.image_column,
        text_column=args.text_column,
        text_pair_column=args.text_pair_column,
        max_length=args.max_length,
        hidden_ratio=args.hidden_ratio or 0.0,
        head_ratio=_ratio(args.head_ratio),
    )
    if args.ratio_table:
        if args.target_macs is not None or args.target_macs_ratio is not None:
            raise ValueError("Give either --ratio-table or a MACs target, not both.")
        table = SNPConfig.from_ratio_table(args.ratio_table)
        common["hidden_ratio"] = args.hidden_ratio if args.hidden_ratio is not None else table.hidden_ratio
        return SNPConfig.from_ratio_table(args.ratio_table, **{k: v for k, v in common.items() if k != "hidden_ratio"})
    explicit = any(getattr(args, f"{g}_ratio") is not None for g in ("qk", "v", "mlp"))
    target_ratio = args.target_macs_ratio
    if target_ratio is None and args.target_macs is None and not explicit and args.hidden_ratio is None:
        target_ratio = 0.5
    return SNPConfig(
        qk_ratio=_ratio(args.qk_ratio),
        v_ratio=_ratio(args.v_ratio),
        mlp_ratio=_ratio(args.mlp_ratio),
        target_macs=args.target_macs,
        target_macs_ratio=target_ratio,
        **common,
    )


def run_prune(args) -> int:
    """Runs the command; returns the exit status (2 with a one-line message for bad input or a Hub error)."""
    from .hub import HubPushError

    try:
        return _run(args)
    except (ValueError, HubPushError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from .calibration import load_calibration_dataset
    from .embedded import digits_dataset, load_embedded_model
    from .evaluation import evaluate_accuracy
    from .finetune import finetune
    from .hub import push_pruned_model
    from .pruner import SNPPruner, load_model
    from .slicing import apply_plan
    from .utils import check_output_dir, retain_freed_memory

    retain_freed_memory()  # the command's own process: large buffers reused, not page-faulted in again

    config = config_from_args(args)
    show = not args.no_progress
    eval_data, dataset_info, train_data = None, None, None
    epochs = args.finetune_epochs
    if args.model is None:
        model_path = load_embedded_model(show_progress=show)
        if args.dataset is None:
            digits = digits_dataset()
            calibration, eval_data, train_data = digits["train"], digits["test"], digits["train"]
            dataset_info = {"name": "scikit-learn digits", "type": "sklearn-digits", "split": "test"}
        else:
            calibration = args.dataset
        epochs = 5 if epochs is None else epochs
    else:
        model_path = args.model
        if args.dataset is None and config.needs_calibration:
            raise ValueError("--dataset is required with --model (or use --criterion magnitude --reconstruct none).")
        calibration = args.dataset
        epochs = 0 if epochs is None else epochs
    if args.dataset is not None:
        if args.eval_split is not None:
            eval_data = load_calibration_dataset(args.dataset, split=args.eval_split)
            dataset_info = {"name": str(args.dataset), "type": str(args.dataset), "split": args.eval_split}
        if epochs:
            train_data = load_calibration_dataset(args.dataset, split=args.finetune_split or args.split)
    elif args.eval_split is not None:
        raise ValueError("--eval-split needs --dataset.")
    if epochs and train_data is None:
        raise ValueError("--finetune-epochs needs a labelled --dataset.")

    pruner = SNPPruner.from_pretrained(model_path)
    check_output_dir(args.output_dir, args.overwrite, source=pruner.source)  # fail before any work
    if pruner.adapter.modality != "image" and (eval_data is not None or epochs):
        raise ValueError(
            "--eval-split and --finetune-epochs measure top-1 on images; for a text model prune here and fine-tune "
            "with optimum_snp.SNPDistillationTrainer (see the README's text section)."
        )

    def accuracy(model):
        return evaluate_accuracy(
            model, eval_data, pruner.image_processor, label_column=args.label_column, show_progress=False
        )

    results = {}
    if eval_data is not None:
        results["original"] = accuracy(pruner.model)
    pruned = pruner.prune(config, calibration_dataset=calibration, split=args.split, show_progress=show)
    if eval_data is not None:
        if config.reconstruct != "none":  # the same plan, sliced again without the refit
            results["pruned, no reconstruction"] = accuracy(apply_plan(pruner.model, pruner.plan))
        results["pruned"] = accuracy(pruned)
    tuning = None
    if epochs:
        tuning = finetune(
            pruned,
            pruner.model,
            train_data,
            pruner.image_processor,
            epochs=epochs,
            learning_rate=args.learning_rate,
            distillation_type=args.distillation,
            image_column=args.image_column,
            label_column=args.label_column,
            seed=args.seed,
            show_progress=show,
        )
        if eval_data is not None:
            results["fine-tuned"] = accuracy(pruned)
    card_results = {**results, "dataset": dataset_info} if results else None
    pruner.save(pruned, args.output_dir, config, overwrite=args.overwrite, results=card_results)
    report = pruner.report
    reloaded_ok = type(load_model(args.output_dir)).__name__ == report["architecture"]
    pushed = push_pruned_model(args.output_dir, args.push_to_hub) if args.push_to_hub else None

    rows = [
        ("model", model_path),
        ("criteria", ", ".join(f"{g}={c}" for g, c in report["criteria"].items())),
        ("calibration samples", report["num_calibration_samples"]),
        (
            "params",
            f"{report['params']['before'] / 1e6:.3f}M -> {report['params']['after'] / 1e6:.3f}M "
            f"({report['params']['ratio']:.1%})",
        ),
        (
            "MACs",
            f"{report['macs']['before'] / 1e9:.4f}G -> {report['macs']['after'] / 1e9:.4f}G "
            f"({report['macs']['ratio']:.1%} kept)",
        ),
    ]
    labels = {
        "original": "top-1 original",
        "pruned, no reconstruction": "top-1 pruned, no reconstruction",
        "pruned": f"top-1 pruned ({config.reconstruct} reconstruction, no fine-tuning)"
        if config.reconstruct != "none"
        else "top-1 pruned (no fine-tuning)",
        "fine-tuned": "top-1 fine-tuned",
    }
    rows += [(labels[stage], f"{value['top1']:.2%}") for stage, value in results.items()]
    rows.append(("prune() seconds", report["seconds"]["total"]))
    if "reconstruction" in report["seconds"]:
        rows.append(("of which reconstruction", report["seconds"]["reconstruction"]))
    if tuning is not None:
        rows.append(
            (
                "fine-tuning",
                f"{tuning['epochs']:g} epochs, {tuning['distillation_type']} distillation, {tuning['seconds']} s",
            )
        )
    rows += [
        ("saved to (with model card)", args.output_dir),
        (f"reloads with {pruner.adapter.auto_class_name(report['architecture'])}", "yes" if reloaded_ok else "NO"),
    ]
    if pushed:
        rows.append(("pushed to", pushed))
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print("\nper layer (heads, qk dim, v dim, mlp) before -> after:")
    for layer in report["layers"]:
        b, a = layer["before"], layer["after"]
        print(f"  layer {layer['layer']:>2}: {tuple(b.values())} -> {tuple(a.values())}")
    return 0 if reloaded_ok else 1


def _megabytes(size: int | None) -> str:
    return "?" if size is None else f"{size / 1e6:.2f} MB"


def run_export_onnx(args) -> int:
    """`optimum-cli snp export onnx`: exports, prints what was written; 2 with a one-line message for bad input."""
    from .exporters.onnx import export_onnx

    try:
        result = export_onnx(
            args.model,
            args.output,
            opset=args.opset,
            attn_implementation=args.attn_implementation,
            validate=not args.no_validate,
            atol=args.atol,
            overwrite=args.overwrite,
            quantize=args.quantize,
        )
    except (ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result.max_abs_diff is None:
        check = "not validated (--no-validate)"
    else:
        check = (
            f"max abs diff {result.max_abs_diff:.2e} <= atol {result.atol:g} "
            f"(batch sizes {', '.join(map(str, result.validated_batch_sizes))})"
        )
    rows = [
        ("model", args.model),
        ("ONNX model", result.path),
        ("opset", result.opset),
        ("attention", result.attn_implementation),
        ("inputs", ", ".join(result.input_names) + " (dynamic batch axis)"),
        ("outputs", ", ".join(result.output_names)),
        ("onnxruntime vs PyTorch", check),
    ]
    if result.quantize is not None:
        rows.append(
            (
                "int8 model",
                f"{result.int8_path} ({result.quantize} quantization, int8 MatMul weights per channel; "
                f"{_megabytes(result.float_bytes)} -> {_megabytes(result.int8_bytes)})",
            )
        )
        if result.int8_checked_on is None:
            rows.append(("int8 vs float", "not validated (--no-validate)"))
        else:
            agreement = "n/a (no logits output)" if result.int8_agreement is None else f"{result.int8_agreement:.1%}"
            where = "validation examples" if result.int8_checked_on == "validation_dataset" else "example inputs"
            rows.append(
                (
                    "int8 vs float",
                    f"top-1 agreement {agreement} on {result.int8_num_samples} {where}, max "
                    f"relative logit error {result.int8_max_rel_error:.1e} (reported, not a failure)",
                )
            )
        if result.int8_top1 is not None:
            rows.append(("top-1 float -> int8", f"{result.float_top1:.2%} -> {result.int8_top1:.2%}"))
    rows.append(("files", ", ".join(result.files)))
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`snp-prune ...` / `python -m optimum_snp ...` (prune), and `python -m optimum_snp export onnx ...` (the same as
    `optimum-cli snp export onnx`)."""
    from optimum.commands.register.register_snp import add_export_onnx_arguments, add_prune_arguments

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["export", "onnx"]:
        parser = argparse.ArgumentParser(prog="python -m optimum_snp export onnx", description=run_export_onnx.__doc__)
        add_export_onnx_arguments(parser)
        return run_export_onnx(parser.parse_args(argv[2:]))
    parser = argparse.ArgumentParser(prog="snp-prune", description=__doc__)
    add_prune_arguments(parser)
    return run_prune(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
