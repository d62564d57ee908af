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
        num_calibration_samples=args.num_samples,
        batch_size=args.batch_size,
        seed=args.seed,
        image_column=args.image_column,
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
    """Runs the command; returns the exit status (2 with a one-line message for bad input)."""
    try:
        return _run(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from transformers import AutoModelForImageClassification

    from .calibration import load_calibration_dataset
    from .embedded import digits_dataset, evaluate_top1, load_embedded_model
    from .pruner import SNPPruner

    config = config_from_args(args)
    show = not args.no_progress
    eval_data = None
    if args.model is None:
        model_path = load_embedded_model(show_progress=show)
        if args.dataset is None:
            digits = digits_dataset()
            calibration, eval_data = digits["train"], digits["test"]
        else:
            calibration = args.dataset
    else:
        model_path = args.model
        if args.dataset is None and config.needs_calibration:
            raise ValueError("--dataset is required with --model (or use --criterion magnitude).")
        calibration = args.dataset
    if args.eval_split is not None:
        if args.dataset is None:
            raise ValueError("--eval-split needs --dataset.")
        eval_data = load_calibration_dataset(args.dataset, split=args.eval_split)
    split = args.split

    pruner = SNPPruner.from_pretrained(model_path)
    before = (
        evaluate_top1(pruner.model, eval_data, pruner.image_processor, label_column=args.label_column)
        if (eval_data is not None)
        else None
    )
    pruned = pruner.prune(
        config,
        calibration_dataset=calibration,
        save_dir=args.output_dir,
        overwrite=args.overwrite,
        split=split,
        show_progress=show,
    )
    after = (
        evaluate_top1(pruned, eval_data, pruner.image_processor, label_column=args.label_column)
        if (eval_data is not None)
        else None
    )
    report = pruner.report
    reloaded_ok = (
        type(AutoModelForImageClassification.from_pretrained(args.output_dir)).__name__ == report["architecture"]
    )

    rows = [
        ("model", model_path),
        ("criteria", ", ".join(f"{g}={c}" for g, c in report["criteria"].items())),
        ("calibration images", report["num_calibration_images"]),
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
    if before is not None:
        rows.append(("top-1 original", f"{before:.2%}"))
        rows.append(("top-1 pruned (no fine-tuning)", f"{after:.2%}"))
    rows += [
        ("prune() seconds", report["seconds"]["total"]),
        ("saved to", args.output_dir),
        ("reloads with AutoModelForImageClassification", "yes" if reloaded_ok else "NO"),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print("\nper layer (heads, qk dim, v dim, mlp) before -> after:")
    for layer in report["layers"]:
        b, a = layer["before"], layer["after"]
        print(f"  layer {layer['layer']:>2}: {tuple(b.values())} -> {tuple(a.values())}")
    return 0 if reloaded_ok else 1


def main(argv: list[str] | None = None) -> int:
    from optimum.commands.register.register_snp import add_prune_arguments

    parser = argparse.ArgumentParser(prog="snp-prune", description=__doc__)
    add_prune_arguments(parser)
    return run_prune(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
