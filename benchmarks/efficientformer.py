"""EfficientFormer and timm models through optimum-snp (issue 11).

Part 1, the paper's EfficientFormer-L1 points: timm's `efficientformer_l1` (random weights: the Hub is not reachable
here, so no accuracy; speed and size depend only on the dims) converted exactly, pruned with the default SNPConfig to
`target_macs` 0.6e9 and 0.5e9 (calibration: 64 digits images through timm's eval transform at 224), then timed side
by side with DeiT-T (the same MACs budget, 1.3 GMACs) pruned to the same two targets: interleaved, median of `--runs`
calls after warm-up, `torch.inference_mode`, batch 1 and 16, SDPA attention.

Part 2, small models trained here on real data (`bench_models.py`, role 'architecture': never used to choose a
default): `digits-efficientformer` (optimum-snp's EfficientFormer family, 128 px) and `mnist-timm-deit` (a timm
`VisionTransformerDistilled`, trained in timm, converted). Each pruned to 50% MACs with the default SNPConfig
(calibration on the train split) and, as the baseline, with uniform ratios and weight magnitude without
reconstruction (the same MACs); test top-1 zero-shot and after the standard short fine-tune (`optimum_snp.finetune`:
5 epochs, soft distillation from the unpruned model).

    python benchmarks/efficientformer.py                 # both parts (about 15 minutes on 2 cores)
    python benchmarks/efficientformer.py --part l1 --runs 20
"""

from __future__ import annotations

import argparse
import time

import torch
from latency import interleaved_latency, machine_line


def _prune(model, config, dataset=None, processor=None):
    from optimum_snp import SNPPruner

    pruner = SNPPruner(model, image_processor=processor)
    start = time.perf_counter()
    pruned = pruner.prune(config, calibration_dataset=dataset, show_progress=False)
    return pruned, time.perf_counter() - start, pruner.report


def part_l1(runs: int, warmup: int) -> None:
    import timm
    from transformers import DeiTForImageClassification

    from optimum_snp import SNPConfig, model_size_of
    from optimum_snp.adapters.timm import convert_timm_model
    from optimum_snp.embedded import digits_dataset
    from optimum_snp.paper import deit_config

    torch.manual_seed(0)
    l1, processor = convert_timm_model(timm.create_model("efficientformer_l1", pretrained=False).eval())
    torch.manual_seed(0)
    deit_t = DeiTForImageClassification(deit_config("tiny")).eval()
    calibration = digits_dataset()["train"]
    models = {"EfficientFormer-L1": l1, "DeiT-T": deit_t}
    print("## EfficientFormer-L1 at the paper's MACs targets (default SNPConfig, random weights)\n")
    print("| model | target GMACs | GMACs | vs target | params (M) | prune s |")
    print("|---|---|---|---|---|---|")
    for name, model in list(models.items()):
        size = model_size_of(model)
        print(f"| {name} | - | {size.gmacs:.3f} | - | {size.mparams:.2f} | - |")
        for target in (0.6e9, 0.5e9):
            pruned, seconds, _ = _prune(model, SNPConfig(target_macs=target), calibration, processor)
            after = model_size_of(pruned)
            print(
                f"| {name} | {target / 1e9:.1f} | {after.gmacs:.3f} | {after.macs / target - 1:+.2%} | "
                f"{after.mparams:.2f} | {seconds:.0f} |"
            )
            models[f"{name} @{target / 1e9:.1f}G"] = pruned
    for model in models.values():
        model.set_attn_implementation("sdpa")
    print(f"\n## Latency (PyTorch, SDPA), interleaved, median of {runs} runs\n\nmachine: {machine_line()}\n")
    print("| model | batch | median ms | speed-up vs its unpruned model |")
    print("|---|---|---|---|")
    for batch in (1, 16):
        x = torch.randn(batch, 3, 224, 224)
        fns = {name: (lambda m=m, x=x: m(pixel_values=x)) for name, m in models.items()}
        with torch.inference_mode():
            timing = interleaved_latency(fns, runs=runs, warmup=warmup)
        for name, t in timing.items():
            base = timing[name.split(" @")[0]]["median"]
            speedup = "-" if " @" not in name else f"{base / t['median']:.2f}x"
            print(f"| {name} | {batch} | {t['median'] * 1e3:.1f} | {speedup} |")


def part_bench(epochs: float) -> None:
    from bench_models import bench_image_processor, load_bench_model
    from transformers import AutoModelForImageClassification

    from optimum_snp import SNPConfig, model_size_of
    from optimum_snp.evaluation import evaluate_accuracy
    from optimum_snp.finetune import finetune

    print("\n## Small models trained here, pruned to 50% MACs (test split; never used to choose a default)\n")
    print("| model | unpruned top-1 | method | GMACs kept | zero-shot top-1 | fine-tuned top-1 | prune s |")
    print("|---|---|---|---|---|---|---|")
    for name in ("digits-efficientformer", "mnist-timm-deit"):
        model_dir, data = load_bench_model(name)
        teacher = AutoModelForImageClassification.from_pretrained(model_dir).eval()
        processor = bench_image_processor(teacher.config.image_size if name != "mnist-timm-deit" else 28)

        def top1(model, processor=processor, data=data):
            return evaluate_accuracy(model, data, processor, split="test", show_progress=False)["top1"]

        base = top1(teacher)
        methods = {
            "SNP default": SNPConfig(target_macs_ratio=0.5),
            "uniform + magnitude, no refit": SNPConfig(
                target_macs_ratio=0.5, allocation="uniform", criterion="magnitude", reconstruct="none"
            ),
        }
        for method, config in methods.items():
            pruned, seconds, _ = _prune(teacher, config, data["train"], processor)
            kept = model_size_of(pruned).macs / model_size_of(teacher).macs
            zero_shot = top1(pruned)
            finetune(pruned, teacher, data, processor, epochs=epochs, show_progress=False)
            print(
                f"| {name} | {base:.1%} | {method} | {kept:.1%} | {zero_shot:.1%} | {top1(pruned):.1%} | "
                f"{seconds:.0f} |"
            )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["l1", "bench", "all"], default="all")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    start = time.perf_counter()
    if args.part in ("l1", "all"):
        part_l1(args.runs, args.warmup)
    if args.part in ("bench", "all"):
        part_bench(args.epochs)
    print(f"\nTotal: {time.perf_counter() - start:.0f} s; {machine_line()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
