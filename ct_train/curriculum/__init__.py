"""Curricula: pure, deterministic, serialisable strategies that decide what to train on next.

A strategy is one module here and one YAML in hydra_conf/curriculum/: the module defines its config
dataclass (extending `CurriculumConfig`) and its class, and registers both with `@register(name,
ConfigClass)`; the YAML lists `<name>_schema` first in its defaults. Nothing else changes.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from ct_train.curriculum.base import ALL, CURRICULA, ClusterStats, Curriculum, DataIndex, Plan, register

# Importing the strategy modules registers them.
from ct_train.curriculum import beyond_iid, iid, it2acl, mixture, odm, phased, tapir  # noqa: E402,F401  isort: skip


def build_curriculum(
    cfg: Any,
    index: DataIndex,
    seed: int,
    total_steps: int,
    global_batch_size: int = 0,
    inputs: Optional[Dict[str, Any]] = None,
) -> Curriculum:
    """The curriculum named by `cfg.name` (checked in compose.py). `total_steps` is -1 when the
    curriculum sets the run's length (trainer.max_steps=-1). `inputs`: the static inputs its
    `needs().inputs` names (an interaction matrix), loaded by the caller: a curriculum does no I/O."""
    kwargs = {"inputs": inputs} if cfg.needs().inputs else {}
    return CURRICULA[cfg.name].cls(
        cfg, index, seed=seed, total_steps=total_steps, global_batch_size=global_batch_size, **kwargs
    )


__all__ = ["ALL", "CURRICULA", "ClusterStats", "Curriculum", "DataIndex", "Plan", "build_curriculum", "register"]
