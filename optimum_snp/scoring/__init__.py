"""Importance scores: one score per prunable unit of every group (higher = more important).

Scorers never cut anything; `optimum_snp.plan.plan_from_scores` turns scores and ratios into a plan.
"""

from .base import GroupScores, LayerScores
from .magnitude import magnitude_scores, random_scores


__all__ = ["GroupScores", "LayerScores", "magnitude_scores", "random_scores"]
