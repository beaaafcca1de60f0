"""`curriculum=iid`: every sample equally likely, passes over the data without repeats.

The one-off instruction-tuning baseline every curriculum is compared against.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from ct_train.config import CurriculumConfig
from ct_train.curriculum.base import ALL, ClusterStats, DataIndex, Plan, register


@register("iid", CurriculumConfig)
class IIDCurriculum:
    def __init__(
        self, cfg: CurriculumConfig, index: DataIndex, seed: int = 0, total_steps: int = 0, global_batch_size: int = 0
    ) -> None:
        self.n = len(index.cluster_ids)

    def pools(self) -> Dict[str, np.ndarray]:
        return {ALL: np.arange(self.n, dtype=np.int32 if self.n < 2**31 else np.int64)}

    def plan(self, step: int) -> Plan:
        return Plan(weights={ALL: 1.0})

    def observe(self, step: int, stats: ClusterStats) -> Dict[str, float]:
        """IID ignores the signal; the trainer still logs it."""
        return {}

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def describe(self) -> str:
        return ""
