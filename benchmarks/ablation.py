"""Ablation of SNP's criteria, allocation and reconstruction on the bench (benchmarks/bench_models.py).

The evidence rule (SNP_METHOD section 7): defaults are chosen on the 'tune' models, measured on their
VALIDATION split; the 'report' models are measured on their TEST split and never used to choose anything. Every
table marks which models were which. Calibration images (64, seed 0; 'validated' allocation holds out 32 more)
come from each model's TRAIN split. Zero-shot = no fine-tuning. KL = KL(original || pruned) of the logits.

Tables:
    qk       query/key pruned alone (50%, 75% of the dims removed): criteria x reconstruction
    main     all groups, 50% and 30% of the MACs kept: allocation {uniform, scores, validated} x criterion {snp,
             magnitude} x reconstruction {none, bias, least_squares}
    ridge    the least-squares ridge (tune models only)
    groups   value dims, MLP units, heads pruned alone: criteria, with the default reconstruction
    before   the previous defaults (qk=attention, allocation by scores, no reconstruction) against today's
    goals    the shipped default against the goals of issue 9, per model
    rounding the default rounding of kept dims (multiples of 8, for speed) against none
    validation  how many held-out images the validated choice uses (32, 64, 128) against uniform ratios
    refit    the refit's target (each projection's output, or its sum with the residual) and ridge (default or 'cv')
    sensitivity  the measured per-(layer, group) loss curves (allocation='sensitivity') as one more candidate of the
             validated allocation (the text default), and alone, against the default
    qk_output  the default prune with query/key by attention_output or magnitude alone (one refit) against the default
    sensitivity_samples  the held-out samples each sensitivity cut is measured on: all, 32, 16

    python benchmarks/ablation.py                      # everything (about 25 minutes on 2 cores)
    python benchmarks/ablation.py --tables qk ridge --models tune
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_models import BENCH, load_bench_model, report_models, tuning_models  # noqa: E402

from optimum_snp import SNPConfig, SNPPruner  # noqa: E402
from optimum_snp.calibration import preprocess_images  # noqa: E402


QK_CRITERIA = [
    "validated",
    "attention",
    "attention_kl",
    "attention_kl_cls",
    "attention_output",
    "attention_iterative",
    "logits",
    "qk_norm",
    "svd",
    "magnitude",
]
ALLOCATIONS = ["uniform", "validated"]
RECONSTRUCTIONS = ["none", "bias", "least_squares"]
RIDGES = [0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]


class Evaluator:
    """Top-1 and logit KL of a pruned model against the original, on one split (held in memory)."""

    def __init__(self, model, processor, split):
        self.model = model.eval()
        self.x = preprocess_images(list(split["image"]), "image", processor)
        self.y = torch.tensor(split["label"])
        self.reference = self.logits(model)
        self.top1 = self._top1(self.reference)

    @torch.inference_mode()
    def logits(self, model):
        model.eval()
        return torch.cat([model(pixel_values=x).logits for x in self.x.split(256)])

    def _top1(self, logits):
        return (logits.argmax(-1) == self.y).float().mean().item()

    def __call__(self, pruned) -> dict:
        logits = self.logits(pruned)
        log_p, log_q = self.reference.log_softmax(-1), logits.log_softmax(-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean().item()
        return {"top1": self._top1(logits), "kl": kl}


def table(title: str, header: list[str], rows=()) -> None:
    """Prints a markdown table's title and header, then any `rows` (more can follow with `row`)."""
    print(f"### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header), flush=True)
    for cells in rows:
        row(cells)


def row(cells: list[str]) -> None:
    print("| " + " | ".join(cells) + " |", flush=True)


def cell(result: dict) -> str:
    return f"{result['top1']:.1%} / {result['kl']:.3f}"


class Bench:
    def __init__(self, name: str, samples: int, seed: int):
        self.name = name
        self.role = BENCH[name].role
        model_dir, data = load_bench_model(name, show_progress=False)
        self.pruner = SNPPruner.from_pretrained(model_dir)
        self.split = "validation" if self.role == "tune" else "test"
        self.evaluator = Evaluator(self.pruner.model, self.pruner.image_processor, data[self.split])
        self.calibration = data["train"]
        self.samples, self.seed = samples, seed
        self.label = f"{name} ({self.role}: {self.split}, {len(self.evaluator.y)} images)"

    def run(self, **kwargs) -> dict:
        config = SNPConfig(num_calibration_samples=self.samples, seed=self.seed, **kwargs)
        start = time.perf_counter()
        pruned = self.pruner.prune(config, calibration_dataset=self.calibration, show_progress=False)
        result = self.evaluator(pruned)
        result["seconds"] = time.perf_counter() - start
        result["macs"] = self.pruner.report["macs"]["ratio"]
        result["chosen"] = self.pruner.report.get("allocation", {}).get("chosen")
        result["qk"] = self.pruner.report["criteria"]["qk"]
        return result


def qk_table(benches: list[Bench], criteria=None) -> None:
    levels = (0.5, 0.75)
    for reconstruct in ("none", "least_squares"):
        header = ["model", "criterion"] + [f"{p:.0%} removed: top-1 / KL" for p in levels]
        table(f"Query/key pruned alone, reconstruct={reconstruct} (top-1 zero-shot / logit KL)", header)
        for bench in benches:
            for criterion in criteria or QK_CRITERIA:
                results = [bench.run(criterion={"qk": criterion}, qk_ratio=p, reconstruct=reconstruct) for p in levels]
                cells = [cell(r) + (f" ({r['qk']})" if criterion == "validated" else "") for r in results]
                row([bench.label, criterion, *cells])
        print()


GROUP_CRITERIA = {
    "v": ["contribution", "redundancy", "magnitude"],
    "mlp": ["contribution", "magnitude"],
    "heads": ["contribution", "magnitude"],
}


def groups_table(benches: list[Bench]) -> None:
    """Value dims, MLP units, whole heads pruned alone: the criteria of each, with the default reconstruction."""
    for group, criteria in GROUP_CRITERIA.items():
        levels = (0.25, 0.5) if group == "heads" else (0.5, 0.75)
        header = ["model", "criterion"] + [f"{p:.0%} removed: top-1 / KL" for p in levels]
        table(f"{group} pruned alone, reconstruct=least_squares (top-1 zero-shot / logit KL)", header)
        for bench in benches:
            for criterion in criteria:
                ratio = "head_ratio" if group == "heads" else f"{group}_ratio"
                cells = [cell(bench.run(criterion={group: criterion}, **{ratio: p})) for p in levels]
                row([bench.label, criterion, *cells])
        print()


def main_table(benches: list[Bench], criteria=("snp", "magnitude")) -> None:
    keeps = (0.5, 0.3)
    header = ["model", "allocation", "criterion", "reconstruct"] + [f"{k:.0%} MACs: top-1 / KL" for k in keeps]
    table(
        "All groups, automatic MACs targets (top-1 zero-shot / logit KL; in brackets what 'validated' chose: query/key "
        "criterion, allocation)",
        header,
    )
    for bench in benches:
        row([bench.label, "unpruned", "-", "-", f"{bench.evaluator.top1:.1%}", ""])
        for allocation in ALLOCATIONS:
            for criterion in criteria:
                for reconstruct in RECONSTRUCTIONS:
                    cells = []
                    for keep in keeps:
                        r = bench.run(
                            target_macs_ratio=keep, allocation=allocation, criterion=criterion, reconstruct=reconstruct
                        )
                        cells.append(cell(r) + choice(r, criterion == "snp", allocation == "validated"))
                    row([bench.label, allocation, criterion, reconstruct, *cells])
    print()


def choice(r: dict, qk: bool = True, allocation: bool = True) -> str:
    parts = ([r["qk"]] if qk else []) + ([r["chosen"]] if allocation else [])
    return f" ({', '.join(parts)})" if parts else ""


def ridge_table(benches: list[Bench]) -> None:
    header = ["model", "ridge"] + [
        f"{k:.0%} MACs ({a}): top-1 / KL" for k in (0.5, 0.3) for a in ("uniform", "validated")
    ]
    table("Least-squares ridge (relative to mean diag(X^T X))", header)
    for bench in benches:
        for ridge in RIDGES:
            cells = [
                cell(bench.run(target_macs_ratio=k, allocation=a, ridge=ridge))
                for k in (0.5, 0.3)
                for a in ("uniform", "validated")
            ]
            row([bench.label, f"{ridge:g}", *cells])
    print()


def goals_table(benches: list[Bench]) -> None:
    header = ["model", "unpruned", "50% MACs: default", "gap", "uniform", "30% MACs: default", "gap", "uniform"]
    table(
        "Shipped default (SNPConfig(target_macs_ratio=k), nothing else set; in brackets what it chose) against "
        "allocation='uniform' with the same criteria and reconstruction, zero-shot top-1",
        header,
    )
    for bench in benches:
        base = bench.evaluator.top1
        cells = [bench.label, f"{base:.1%}"]
        for keep in (0.5, 0.3):
            default = bench.run(target_macs_ratio=keep)
            uniform = bench.run(target_macs_ratio=keep, allocation="uniform")
            cells += [
                f"{default['top1']:.1%}{choice(default)}",
                f"{(default['top1'] - base) * 100:+.1f} pt",
                f"{uniform['top1']:.1%}",
            ]
        row(cells)
    print()


def rounding_table(benches: list[Bench]) -> None:
    """The default rounding of kept dims (`round_to=None`: multiples of 8 in groups of 64+ units, for speed) against
    none (`round_to=1`), everything else default, zero-shot top-1 / KL."""
    header = ["model", "unpruned"] + [f"{k:.0%} MACs: {w}" for k in (0.5, 0.3) for w in ("round_to=1", "default")]
    table("Rounding kept dims: none vs the default (top-1 zero-shot / logit KL)", header)
    for bench in benches:
        cells = [bench.label, f"{bench.evaluator.top1:.1%}"]
        for keep in (0.5, 0.3):
            exact = bench.run(target_macs_ratio=keep, round_to=1)
            default = bench.run(target_macs_ratio=keep)
            cells += [
                cell(exact) + f" ({exact['macs']:.1%} MACs)",
                cell(default) + f" ({default['macs']:.1%} MACs)",
            ]
        row(cells)
    print()


VALIDATION_SIZES = (32, 64, 128)


def validation_table(benches: list[Bench]) -> None:
    """How many held-out calibration images the validated choice needs: `num_validation_samples` 32 (the default
    until this table), 64 (the ViT/DeiT default it chose, on the tune models) and 128 (fewer where the train split runs out), against uniform ratios; everything else default, zero-shot
    top-1 / KL, in brackets what was chosen."""
    header = ["model", "unpruned"] + [
        f"{k:.0%} MACs: {w}" for k in (0.5, 0.3) for w in ["uniform"] + [f"{n} held out" for n in VALIDATION_SIZES]
    ]
    table("Held-out images for the validated choice (top-1 zero-shot / logit KL)", header)
    for bench in benches:
        cells = [bench.label, f"{bench.evaluator.top1:.1%}"]
        for keep in (0.5, 0.3):
            cells.append(cell(bench.run(target_macs_ratio=keep, allocation="uniform")))
            for n in VALIDATION_SIZES:
                result = bench.run(target_macs_ratio=keep, num_validation_samples=n)
                cells.append(cell(result) + choice(result))
        row(cells)
    print()


REFIT_VARIANTS = {
    "output": {"refit_target": "output"},
    "residual": {"refit_target": "residual"},
    "ridge=cv": {"ridge": "cv"},
    "residual, ridge=cv": {"refit_target": "residual", "ridge": "cv"},
}


def refit_table(benches: list[Bench]) -> None:
    """The least-squares refit's target ('output' vs 'residual') and ridge (the default vs cross-validated),
    everything else default, zero-shot top-1 / KL."""
    header = ["model", "unpruned"] + [f"{k:.0%} MACs: {name}" for k in (0.5, 0.3) for name in REFIT_VARIANTS]
    table("Refit target and ridge (top-1 zero-shot / logit KL; in brackets what the default chose)", header)
    for bench in benches:
        cells = [bench.label, f"{bench.evaluator.top1:.1%}"]
        for keep in (0.5, 0.3):
            for options in REFIT_VARIANTS.values():
                result = bench.run(target_macs_ratio=keep, **options)
                cells.append(cell(result) + choice(result))
        row(cells)
    print()


def before_table(benches: list[Bench]) -> None:
    """The defaults before reconstruction and validated choices (qk=attention, allocation by scores / MACs^0.25, no
    refit) against today's, zero-shot top-1 / KL."""
    old = dict(criterion={"qk": "attention"}, allocation="scores", reconstruct="none")
    header = ["model", "unpruned"] + [
        f"{k:.0%} MACs: {w}" for k in (0.5, 0.3) for w in ("previous default", "default")
    ]
    table("Previous default vs today's (top-1 zero-shot / logit KL)", header)
    for bench in benches:
        cells = [bench.label, f"{bench.evaluator.top1:.1%}"]
        for keep in (0.5, 0.3):
            cells += [cell(bench.run(target_macs_ratio=keep, **old)), cell(bench.run(target_macs_ratio=keep))]
        row(cells)
    print()


QK_CHOICE_SETTINGS = {
    "q/k 50% removed": dict(qk_ratio=0.5),
    "q/k 75% removed": dict(qk_ratio=0.75),
    "50% MACs": dict(target_macs_ratio=0.5),
    "30% MACs": dict(target_macs_ratio=0.3),
    "50% MACs, uniform": dict(target_macs_ratio=0.5, allocation="uniform"),
    "30% MACs, uniform": dict(target_macs_ratio=0.3, allocation="uniform"),
}


def qk_choice_table(benches: list[Bench]) -> None:
    """The query/key criterion chosen after the refit ('validated': a refit per criterion) or before it
    ('validated_before_refit': the sliced models compared, one refit)."""
    variants = ("validated", "validated_before_refit")
    header = ["model", "setting"] + [f"{v}: top-1 / KL (chosen)" for v in variants] + [f"{v}: s" for v in variants]
    table(
        "Query/key criterion chosen after the refit or before it (default criteria otherwise; top-1 zero-shot / "
        "logit KL; in brackets the query/key criterion and allocation chosen; prune() seconds)",
        header,
    )
    for bench in benches:
        for setting, kwargs in QK_CHOICE_SETTINGS.items():
            results = [bench.run(criterion={"qk": v}, **kwargs) for v in variants]
            row(
                [bench.label, setting]
                + [cell(r) + choice(r, allocation="target_macs_ratio" in kwargs) for r in results]
                + [f"{r['seconds']:.1f}" for r in results]
            )
    print()


def variants_table(benches: list[Bench], title: str, variants: dict[str, dict]) -> None:
    """One row per model: each variant (SNPConfig fields on top of the MACs target) at 50% and 30% MACs, top-1 /
    KL and what it chose, and the seconds of each variant's prune at 30%."""
    header = ["model"] + [f"{k:.0%}: {name}" for k in (0.5, 0.3) for name in variants]
    header += ["s (30%): " + " / ".join(variants)]
    table(f"{title}; top-1 zero-shot / logit KL; in brackets the query/key criterion and allocation chosen", header)
    for bench in benches:
        cells, seconds = [bench.label], []
        for keep in (0.5, 0.3):
            results = [bench.run(target_macs_ratio=keep, **kwargs) for kwargs in variants.values()]
            cells += [cell(r) + choice(r) for r in results]
            seconds = [f"{r['seconds']:.0f}" for r in results]
        row(cells + [" / ".join(seconds)])
    print()


def qk_output_table(benches: list[Bench]) -> None:
    """The default (query/key chosen between attention_kl and magnitude by two refits) against attention_output and
    weight magnitude alone (one refit each), all groups to 50% / 30% MACs, everything else default."""
    variants_table(
        benches,
        "Query/key criterion of the default prune: validated (default) against attention_output and magnitude alone",
        {
            "validated (default)": {},
            "attention_output": {"criterion": {"qk": "attention_output"}},
            "magnitude": {"criterion": {"qk": "magnitude"}},
        },
    )


def sensitivity_table(benches: list[Bench]) -> None:
    """The validated allocation without and with the sensitivity candidate, and allocation='sensitivity' alone
    (every cut measured on all held-out images, as when the candidate was chosen)."""
    variants_table(
        benches,
        "Sensitivity allocation as a candidate of the validated allocation (SNPConfig(sensitivity_candidate=False / "
        "True)) and alone (allocation='sensitivity'), each cut on all held-out images; default criteria and refit",
        {
            "without candidate": {"sensitivity_candidate": False},
            "with candidate": {"sensitivity_candidate": True, "sensitivity_samples": None},
            "sensitivity alone": {"allocation": "sensitivity", "sensitivity_samples": None},
        },
    )


def criteria_table(benches: list[Bench]) -> None:
    """The default pipeline (validated allocation with the sensitivity candidate, least-squares refit) with SNP's
    activation contribution for value dims and MLP units, with their weight magnitude (the ViT/DeiT default since
    this table chose it on the tune models), and with magnitude everywhere (query/key included)."""
    variants_table(
        benches,
        "Criteria in the default pipeline (SNPConfig(criterion={'v': 'contribution', 'mlp': 'contribution'} / "
        "{'v': 'magnitude', 'mlp': 'magnitude'} / 'magnitude'))",
        {
            "v, mlp contribution": {"criterion": {"v": "contribution", "mlp": "contribution"}},
            "v, mlp magnitude": {"criterion": {"v": "magnitude", "mlp": "magnitude"}},
            "all magnitude": {"criterion": "magnitude"},
        },
    )


def sensitivity_samples_table(benches: list[Bench]) -> None:
    """The sensitivity candidate's cuts measured on all held-out images or on the first 32 / 16 of them."""
    variants_table(
        benches,
        "Held-out samples per sensitivity cut (SNPConfig(sensitivity_samples=None / 32 / 16)), the default pipeline "
        "otherwise",
        {f"{c or 'all'} samples": {"sensitivity_samples": c} for c in (None, 32, 16)},
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["all"], help="bench names, or 'tune' / 'report' / 'all'")
    parser.add_argument("--tables", nargs="+", default=["goals", "qk", "main", "ridge"])
    parser.add_argument("--samples", type=int, default=64, help="calibration images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--qk-criteria", nargs="+", default=None, choices=QK_CRITERIA, help="the 'qk' table's criteria (default: all)"
    )
    parser.add_argument(
        "--validated-qk",
        default=None,
        choices=QK_CRITERIA,
        help="the data-driven criterion 'validated' compares with magnitude (optimum_snp.config.VALIDATED_SNP_QK; "
        "default: the shipped one)",
    )
    args = parser.parse_args(argv)
    if args.validated_qk:
        import optimum_snp.config

        optimum_snp.config.VALIDATED_SNP_QK = args.validated_qk
    names = []
    for item in args.models:
        names += {"tune": tuning_models(), "report": report_models(), "all": tuning_models() + report_models()}.get(
            item, [item]
        )
    start = time.perf_counter()
    benches = [Bench(name, args.samples, args.seed) for name in names]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; models: " + ", ".join(b.label for b in benches)
    )
    print()
    tables = {
        "goals": goals_table,
        "validation": validation_table,
        "qk": lambda chosen: qk_table(chosen, args.qk_criteria),
        "main": main_table,
        "ridge": ridge_table,
        "groups": groups_table,
        "before": before_table,
        "rounding": rounding_table,
        "refit": refit_table,
        "qk_choice": qk_choice_table,
        "qk_output": qk_output_table,
        "sensitivity": sensitivity_table,
        "sensitivity_samples": sensitivity_samples_table,
        "criteria": criteria_table,
    }
    for name in args.tables:
        chosen = benches if name != "ridge" else [b for b in benches if b.role == "tune"]
        if chosen:
            tables[name](chosen)
    print(f"total time {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
