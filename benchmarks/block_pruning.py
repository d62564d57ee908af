"""Block pruning (issue 12): may the allocation remove a layer's whole attention or MLP block?

For each model, the default SNPConfig at a MACs target, with and without `block_pruning=True` (with it, the validated
allocation also tries the score greedy that may drop whole blocks, and keeps whichever candidate has the lowest
divergence on the held-out calibration images), and 'forced': only the greedy that may drop blocks
(`allocation='scores'`), to show what removing blocks gives. Top-1 zero-shot and after the standard short fine-tune
(`optimum_snp.finetune`: 5 epochs of soft distillation from the unpruned model).

Models: the embedded digits ViT (the issue's check; its test split) and the tune models of `bench_models.py` on their
validation splits (which decide the default; never the report models' test splits).

    python benchmarks/block_pruning.py [--keep 0.3] [--epochs 5] [--models digits-vit patches-vit]
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_models import bench_image_processor, load_bench_model
from latency import machine_line
from transformers import AutoModelForImageClassification


def main(argv=None) -> int:
    from optimum_snp import SNPConfig, SNPPruner, get_adapter, model_size_of
    from optimum_snp.evaluation import evaluate_accuracy
    from optimum_snp.finetune import finetune

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=float, nargs="+", default=[0.3], help="fractions of MACs kept")
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--models", nargs="+", default=["digits-vit", "patches-vit"])
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    start = time.perf_counter()
    print(
        "| model (split) | MACs kept | block pruning | chosen allocation | removed blocks | zero-shot top-1 | "
        "fine-tuned top-1 |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        model_dir, data = load_bench_model(name, show_progress=False)
        model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
        processor = bench_image_processor(model.config.image_size)
        split = "test" if name == "digits-vit" else "validation"

        def top1(m, processor=processor, data=data, split=split):
            return evaluate_accuracy(m, data, processor, split=split, show_progress=False)["top1"]

        base = top1(model)
        for keep in args.keep:
            modes = {
                "off (default)": SNPConfig(target_macs_ratio=keep),
                "allowed": SNPConfig(target_macs_ratio=keep, block_pruning=True),
                "forced (scores+blocks only)": SNPConfig(
                    target_macs_ratio=keep, block_pruning=True, allocation="scores"
                ),
            }
            for mode, config in modes.items():
                pruner = SNPPruner(model, image_processor=processor)
                pruned = pruner.prune(config, calibration_dataset=data["train"], show_progress=False)
                dims = get_adapter(pruned).layer_dims()
                removed = [f"{i}.attn" for i, d in enumerate(dims) if not d.has_attention]
                removed += [f"{i}.mlp" for i, d in enumerate(dims) if not d.has_mlp]
                kept = model_size_of(pruned).macs / model_size_of(model).macs
                zero_shot = top1(pruned)
                finetune(pruned, model, data, processor, epochs=args.epochs, show_progress=False)
                print(
                    f"| {name} ({split}, unpruned {base:.1%}) | {kept:.1%} | {mode} | "
                    f"{pruner.report['allocation']['chosen']} | {', '.join(removed) or '-'} | {zero_shot:.1%} | "
                    f"{top1(pruned):.1%} |"
                )
    print(f"\nTotal: {time.perf_counter() - start:.0f} s; {machine_line()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
