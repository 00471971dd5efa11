"""Evaluation protocols (METHOD.md §8): SYSU-MM01 and RegDB, single runs and 10-trial averages.

``evaluate_sysu`` / ``evaluate_regdb`` give the community numbers (``cmc, mAP, mINP``) from a distance
matrix; ``evaluate_sysu_trials`` / ``evaluate_regdb_splits`` run a whole protocol from features and
summarise it (mean and std over trials, JSON or a table).
"""

from mult.metrics.protocol import (
    ProtocolSummary,
    RegDBSplit,
    TrialResult,
    evaluate_regdb_splits,
    evaluate_sysu_trials,
    feature_distance,
    l2_normalize,
)
from mult.metrics.ranking import evaluate_regdb, evaluate_sysu

__all__ = [
    "evaluate_sysu",
    "evaluate_regdb",
    "evaluate_sysu_trials",
    "evaluate_regdb_splits",
    "feature_distance",
    "l2_normalize",
    "ProtocolSummary",
    "RegDBSplit",
    "TrialResult",
]
