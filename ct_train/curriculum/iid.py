"""`curriculum=iid`: every sample equally likely, passes over the data without repeats.

The one-off instruction-tuning baseline every curriculum is compared against.
"""

from __future__ import annotations

from typing import Any, Dict

from ct_train.curriculum.base import ALL, ClusterStats, Plan


class IIDCurriculum:
    def __init__(self, clusters: list, cluster_sizes: list) -> None:
        self.clusters = list(clusters)

    def plan(self, step: int) -> Plan:
        return Plan(weights={ALL: 1.0})

    def observe(self, step: int, stats: ClusterStats) -> None:
        """IID ignores the signal; it is still logged by the trainer."""

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass
