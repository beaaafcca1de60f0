"""Curricula: pure, deterministic, serialisable strategies that decide what to train on next.

New strategies join by adding an entry to `CURRICULA` (name -> class taking the config node, the
cluster names and the number of training samples in each cluster).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

from ct_train.curriculum.base import ALL, ClusterStats, Curriculum, Plan
from ct_train.curriculum.iid import IIDCurriculum

CURRICULA: Dict[str, Callable[..., Curriculum]] = {
    "iid": lambda cfg, clusters, sizes: IIDCurriculum(clusters, sizes),
}


def build_curriculum(cfg: Any, clusters: List[str], cluster_sizes: List[int]) -> Curriculum:
    """The curriculum named by `cfg.name` (validated in config.py)."""
    return CURRICULA[cfg.name](cfg, clusters, cluster_sizes)


__all__ = ["ALL", "CURRICULA", "ClusterStats", "Curriculum", "Plan", "build_curriculum"]
