"""Evaluation metrics shipped with optimum-snp, loadable with `evaluate.load` without the Hugging Face Hub.

`METRIC_PATH` is the folder of the `snp_accuracy` metric (top-1 / top-5 accuracy from logits or class ids);
`load_accuracy_metric()` returns it as an `evaluate.Metric`.
"""

from __future__ import annotations

import os


METRIC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "snp_accuracy")


def load_accuracy_metric(**kwargs):
    """`evaluate.load(METRIC_PATH, **kwargs)`: the `snp_accuracy` metric, read from the installed package (no network).

    `compute(predictions=logits, references=labels)` returns {"top1": ..., "top5": ...} ("top5" when the logits
    have at least 5 classes); with class ids as predictions, only "top1".
    """
    import evaluate

    return evaluate.load(METRIC_PATH, **kwargs)


__all__ = ["METRIC_PATH", "load_accuracy_metric"]
