"""Top-1 / top-k accuracy of a classifier, as an `evaluate.Metric` that loads from this file without the Hub.

`evaluate.load("accuracy")` downloads its script from the Hub; this module ships inside optimum-snp, so
`evaluate.load("<path to this folder>")` works offline. It takes either logits (one row of class scores per
example: top-1 and top-k) or predicted class ids (top-1 only).
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np


_CITATION = ""  # no paper to cite: plain top-k accuracy

_DESCRIPTION = """\
Top-1 accuracy is the fraction of examples whose highest-scoring class is the reference class; top-k accuracy the
fraction whose reference class is among the k highest-scoring classes. Ties are broken towards the lower class id,
as `argmax` does, so top-1 equals the accuracy of `logits.argmax(-1)`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`, or `list` of `int`): one row of class scores (logits or
        probabilities) per example, or one predicted class id per example.
    references (`list` of `int`): the true class id of each example.
    k (`int`, defaults to 5): the k of top-k accuracy; reported only for scores with at least k classes.
Returns:
    top1 (`float`): top-1 accuracy, from 0 to 1.
    top{k} (`float`): top-k accuracy, from 0 to 1; only when predictions are scores over at least k classes.
Examples:
    >>> metric = evaluate.load("path/to/optimum_snp/metrics/snp_accuracy")
    >>> metric.compute(predictions=[[0.1, 0.9], [0.8, 0.2]], references=[1, 1])
    {'top1': 0.5}
    >>> metric.compute(predictions=[1, 0, 1], references=[1, 1, 1])
    {'top1': 0.6666666666666666}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SnpAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Sequence(datasets.Value("float32")),
                        "references": datasets.Value("int64"),
                    }
                ),
                datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            ],
        )

    def _compute(self, predictions, references, k=5):
        references = np.asarray(references, dtype=np.int64)
        if len(references) == 0:
            raise ValueError("No predictions to score: add at least one example before compute().")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}.")
        scores = np.asarray(predictions)
        if scores.ndim == 1:  # predicted class ids
            return {"top1": float(np.mean(scores.astype(np.int64) == references))}
        if scores.ndim != 2:
            raise ValueError(
                f"predictions must be class ids (one int per example) or scores (one row per example), got an "
                f"array of shape {scores.shape}."
            )
        num_classes = scores.shape[1]
        # A stable sort of the negated scores breaks ties towards the lower class id, like argmax.
        ranked = np.argsort(-scores, axis=1, kind="stable")
        hits = ranked == references[:, None]
        result = {"top1": float(np.mean(hits[:, 0]))}
        if num_classes >= k:
            result[f"top{k}"] = float(np.mean(hits[:, :k].any(axis=1)))
        return result
