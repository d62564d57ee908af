"""Distill a tiny pruned student under torchrun (CPU, gloo); run by tests/test_training.py.

Usage: torchrun --standalone --nproc_per_node=2 tests/ddp_train_script.py OUTPUT_DIR

Every rank writes OUTPUT_DIR/rank{R}.json with a checksum of its final student weights; the final model is saved to
OUTPUT_DIR/final.
"""

import json
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optimum_snp import PruningRatios, apply_plan, build_plan  # noqa: E402
from optimum_snp.training import SNPDistillationTrainer, SNPTrainingArguments  # noqa: E402
from tests.conftest import tiny_model  # noqa: E402
from tests.test_finetune import DigitsDataset  # noqa: E402


def checksum(model: torch.nn.Module) -> dict:
    params = dict(model.named_parameters())
    return {
        "sum": sum(params[name].detach().double().sum().item() for name in sorted(params)),
        "numel": sum(p.numel() for p in params.values()),
    }


def main(out_dir: Path) -> None:
    teacher = tiny_model("vit", seed=0, noisy=False, initializer_range=0.02)
    student = apply_plan(teacher, build_plan(teacher, PruningRatios.uniform(3, qk=0.25, v=0.25, mlp=0.25)))
    initial = checksum(student)
    args = SNPTrainingArguments(
        output_dir=str(out_dir / "run"),
        per_device_train_batch_size=8,
        max_steps=4,
        learning_rate=5e-3,
        save_strategy="no",
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        distillation_type="soft",
    )
    trainer = SNPDistillationTrainer(student, args, teacher=teacher, train_dataset=DigitsDataset(n=64))
    trainer.train()
    trainer.save_model(str(out_dir / "final"))
    rank = trainer.args.process_index
    record = {
        "rank": rank,
        "world_size": trainer.args.world_size,
        "wrapped": type(trainer.model_wrapped).__name__,
        "teacher_in_wrapped": any(m is teacher for m in trainer.model_wrapped.modules()),
        "global_step": trainer.state.global_step,
        "initial": initial,
        "final": checksum(trainer.model),
    }
    (out_dir / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
