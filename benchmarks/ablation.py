"""Ablation of SNP's criteria on the embedded digits ViT (trained model, real images, no fine-tuning).

For every group pruned alone (QK, V, MLP: ~50% and ~70% of the group's units removed) and for all groups together
(MACs kept ~50% and ~30%: uniform ratios, and automatic allocation), each criterion is scored by zero-shot top-1
on the digits test split and KL(original || pruned) of the logits. For QK, also how well attention maps survive:
mean total-variation distance between the original's and the pruned model's attention rows (all layers, heads).

    python benchmarks/ablation.py            # prints markdown tables (about 3 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import time

import torch

from optimum_snp import SNPConfig, SNPPruner, model_size_of
from optimum_snp.calibration import calibration_batches
from optimum_snp.embedded import digits_dataset, load_embedded_model


QK_VARIANTS = [
    ("snp (attention)", {"qk": "attention"}, 4),
    ("svd r=1 (paper)", {"qk": "svd"}, 1),
    ("svd r=4 (paper)", {"qk": "svd"}, 4),
    ("svd r=24 (all)", {"qk": "svd"}, 24),
    ("svd centered r=4", {"qk": "svd_centered"}, 4),
    ("||q|| ||k||", {"qk": "qk_norm"}, 4),
    ("magnitude", {"qk": "magnitude"}, 4),
    ("random", {"qk": "random"}, 4),
]
V_VARIANTS = [
    ("snp (contribution)", {"v": "contribution"}),
    ("redundancy x contribution, greedy (paper)", {"v": "redundancy"}),
    ("redundancy only, greedy", {"v": "redundancy_only"}),
    ("magnitude", {"v": "magnitude"}),
    ("random", {"v": "random"}),
]
MLP_VARIANTS = [
    ("snp (contribution)", {"mlp": "contribution"}),
    ("magnitude", {"mlp": "magnitude"}),
    ("random", {"mlp": "random"}),
]
HIDDEN_VARIANTS = [
    ("snp (contribution)", {"hidden": "contribution"}),
    ("magnitude", {"hidden": "magnitude"}),
    ("random", {"hidden": "random"}),
]
HEAD_VARIANTS = [
    ("snp (contribution)", {"heads": "contribution"}),
    ("magnitude", {"heads": "magnitude"}),
    ("random", {"heads": "random"}),
]
ALL_VARIANTS = [("snp", "snp"), ("magnitude", "magnitude"), ("random", "random")]
COMBOS = [
    ("snp default: qk=attention, v=contribution", {"qk": "attention", "v": "contribution"}),
    ("qk=attention, v=redundancy (paper's V)", {"qk": "attention", "v": "redundancy"}),
    ("paper literal: qk=svd r=4, v=redundancy", {"qk": "svd", "v": "redundancy"}),
    ("qk=svd r=4, v=contribution", {"qk": "svd", "v": "contribution"}),
    ("magnitude everywhere", "magnitude"),
]


class Evaluator:
    def __init__(self, model, processor, test, max_images=None):
        self.model = model.eval()
        data = test if max_images is None else test.select(range(min(max_images, len(test))))
        self.x = processor([im.convert("RGB") for im in data["image"]], return_tensors="pt")["pixel_values"]
        self.y = torch.tensor(data["label"])
        self.reference = self._logits(model)
        self.reference_attn = None

    @torch.inference_mode()
    def _logits(self, model):
        return torch.cat([model(pixel_values=x).logits for x in self.x.split(256)])

    @torch.inference_mode()
    def _attentions(self, model):
        model.set_attn_implementation("eager")
        try:
            return model(pixel_values=self.x[:128], output_attentions=True).attentions
        finally:
            model.set_attn_implementation("sdpa")

    def __call__(self, pruned, attention=False):
        logits = self._logits(pruned.eval())
        top1 = (logits.argmax(-1) == self.y).float().mean().item()
        kl = torch.nn.functional.kl_div(
            logits.log_softmax(-1), self.reference.log_softmax(-1), log_target=True, reduction="batchmean"
        ).item()
        result = {"top1": top1, "kl": kl}
        if attention:
            if self.reference_attn is None:
                self.reference_attn = self._attentions(self.model)
            tv = [
                0.5 * (a - b).abs().sum(-1).mean().item()
                for a, b in zip(self.reference_attn, self._attentions(pruned), strict=True)
            ]
            result["attn_tv"] = sum(tv) / len(tv)
        return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=64, help="calibration images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    model_dir = load_embedded_model()
    pruner = SNPPruner.from_pretrained(model_dir)
    digits = digits_dataset()
    evaluator = Evaluator(pruner.model, pruner.image_processor, digits["test"])
    batches = calibration_batches(
        digits["train"], pruner.image_processor, num_samples=args.samples, seed=args.seed, show_progress=False
    )
    calibration = digits["train"]
    base_top1 = (evaluator.reference.argmax(-1) == evaluator.y).float().mean().item()
    base = model_size_of(pruner.model)
    print(
        f"embedded digits ViT ({model_dir}): top-1 {base_top1:.2%} on {len(evaluator.y)} test images, "
        f"{base.gmacs * 1e3:.1f} MMACs; {len(batches)} calibration batches of the train split (seed {args.seed})\n"
    )

    def run(config, attention=False):
        pruned = pruner.prune(config, calibration_dataset=calibration, show_progress=False)
        result = evaluator(pruned, attention=attention)
        result["macs"] = pruner.report["macs"]["ratio"]
        return result

    def common(**kw):
        return SNPConfig(num_calibration_samples=args.samples, seed=args.seed, **kw)

    def table(title, header, rows):
        print(f"### {title}\n")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print()

    fmt = lambda r: [f"{r['top1']:.1%}", f"{r['kl']:.3f}"]  # noqa: E731

    for group, variants, ratio_key, levels in (
        ("QK", QK_VARIANTS, "qk_ratio", (0.5, 0.75)),
        ("V", V_VARIANTS, "v_ratio", (0.5, 0.75)),
        ("MLP", MLP_VARIANTS, "mlp_ratio", (0.5, 0.75)),
        ("Hidden channels", HIDDEN_VARIANTS, "hidden_ratio", (0.25, 0.5)),
        ("Heads", HEAD_VARIANTS, "head_ratio", (0.25, 0.5)),
    ):
        rows = []
        for variant in variants:
            name, criterion = variant[0], variant[1]
            rank = variant[2] if len(variant) > 2 else 4
            cells = [name]
            for removed in levels:
                r = run(common(criterion=criterion, qk_rank=rank, **{ratio_key: removed}), attention=group == "QK")
                cells += fmt(r) + ([f"{r['attn_tv']:.3f}"] if group == "QK" else [])
            rows.append(cells)
        extra = ["attn TV"] if group == "QK" else []
        header = ["criterion"] + [f"{h} ({p:.0%} removed)" for p in levels for h in ["top-1", "KL", *extra]]
        table(
            f"{group} only (top-1 zero-shot, KL(original||pruned) of logits{', attention-row TV distance' if extra else ''})",
            header,
            rows,
        )

    rows = []
    for name, criterion in ALL_VARIANTS:
        for mode in ("uniform", "auto"):
            cells = [name, mode]
            for keep in (0.5, 0.3):
                if mode == "auto":
                    config = common(criterion=criterion, target_macs_ratio=keep)
                else:
                    removed = {0.5: 0.5, 0.3: 0.7}[keep]  # the same fraction of every group: MACs ~ kept fraction
                    config = common(criterion=criterion, qk_ratio=removed, v_ratio=removed, mlp_ratio=removed)
                r = run(config)
                cells += [f"{r['macs']:.1%}", *fmt(r)]
            rows.append(cells)
    header = ["criterion", "ratios"] + [
        f"{h} (~{k} MACs)" for k in ("50%", "30%") for h in ("MACs kept", "top-1", "KL")
    ]
    table("All groups together (QK + V + MLP)", header, rows)

    rows = []
    for name, criterion in COMBOS:
        cells = [name]
        for keep in (0.5, 0.3):
            cells += fmt(run(common(criterion=criterion, target_macs_ratio=keep)))
        rows.append(cells)
    header = ["criteria (MLP, hidden, heads: snp unless said)"] + [
        f"{h} ({k} MACs, auto)" for k in ("50%", "30%") for h in ("top-1", "KL")
    ]
    table("Criterion combinations with automatic allocation", header, rows)
    print(f"total time {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
