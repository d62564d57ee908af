"""A pruned model fine-tunes with transformers.Trainer and its checkpoints reload."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from transformers import AutoModelForImageClassification, Trainer, TrainingArguments

import optimum_snp  # noqa: F401
from optimum_snp import PruningRatios, apply_plan, build_plan

from .conftest import tiny_model


class DigitsDataset(torch.utils.data.Dataset):
    """scikit-learn's 8x8 digits, upsampled to 32x32 RGB (real images, shipped with scikit-learn)."""

    def __init__(self, n=256, num_labels=5):
        digits = load_digits()
        keep = np.flatnonzero(digits.target < num_labels)[:n]
        images = torch.tensor(digits.images[keep], dtype=torch.float32) / 16.0
        images = images.repeat_interleave(4, 1).repeat_interleave(4, 2)
        self.pixel_values = ((images - 0.5) / 0.5).unsqueeze(1).repeat(1, 3, 1, 1)
        self.labels = torch.tensor(digits.target[keep])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"pixel_values": self.pixel_values[i], "labels": self.labels[i]}


def mean_loss(model, data):
    model.eval()
    with torch.no_grad():
        return model(pixel_values=data.pixel_values, labels=data.labels).loss.item()


@pytest.mark.parametrize("kind", ["vit", "deit"])
def test_trainer_lowers_loss_and_checkpoint_reloads(kind, tmp_path):
    model = tiny_model(kind, seed=0, noisy=False, initializer_range=0.02)
    ratios = PruningRatios.uniform(3, qk=0.25, v=0.25, mlp=0.25, heads=0.25, hidden=0.25)
    pruned = apply_plan(model, build_plan(model, ratios))
    data = DigitsDataset(n=64)
    before = mean_loss(pruned, data)
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=16,
        num_train_epochs=15,
        learning_rate=5e-3,
        warmup_steps=5,
        save_strategy="epoch",
        save_total_limit=1,
        logging_steps=5,
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=pruned, args=args, train_dataset=data)
    trainer.train()
    after = mean_loss(pruned, data)
    assert after < 0.85 * before, (before, after)

    checkpoints = sorted((tmp_path / "run").glob("checkpoint-*"))
    assert checkpoints, "Trainer saved no checkpoint"
    reloaded = AutoModelForImageClassification.from_pretrained(
        checkpoints[-1], attn_implementation=pruned.config._attn_implementation
    ).eval()
    assert type(reloaded) is type(pruned)
    pruned.eval()
    with torch.no_grad():
        x = data.pixel_values[:8]
        assert torch.equal(reloaded(x).logits, pruned(x).logits)


def test_finetune_needs_a_label_column():
    import datasets

    from optimum_snp.calibration import derive_image_processor
    from optimum_snp.embedded import digits_dataset
    from optimum_snp.finetune import finetune

    model = tiny_model("vit", num_labels=10)
    unlabelled = digits_dataset()["test"].select(range(8)).remove_columns("label")
    assert isinstance(unlabelled, datasets.Dataset)
    with pytest.raises(ValueError, match=r"no label column 'label': found columns \['image'\]"):
        finetune(model, None, unlabelled, derive_image_processor(model.config), epochs=1, show_progress=False)
