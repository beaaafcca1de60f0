"""Fault drills: the one place where reliability drills and their tests reach into a run
(docs/reliability.md, tests/integration/test_faults.py). Read from the environment; inert unless set.

CT_TRAIN_NAN_AT=<step>: rank 0's first micro-batch of optimizer step <step> (1-based) gets a NaN
loss (the non-finite-loss path). CT_TRAIN_KILL_AT=<point>:<step>: rank 0 SIGKILLs itself at that
point of that step's checkpoint save (before_engine_save, after_engine_save, before_marker_rename) or
of the final export (during_export: the weights written, the tokenizer not yet).
CT_TRAIN_SLOW_START=<seconds>: rank 0 takes that much longer to prepare the data (a large dataset).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Callable, Optional

import torch


class FaultDrills:
    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.nan_at = int(os.environ.get("CT_TRAIN_NAN_AT", "0") or 0)
        self.kill_at = os.environ.get("CT_TRAIN_KILL_AT")

    def slow_start(self) -> None:
        """Inside rank 0's data preparation: as slow as a large dataset would be, when the drill says so."""
        seconds = float(os.environ.get("CT_TRAIN_SLOW_START", "0") or 0)
        if seconds > 0 and self.rank == 0:
            time.sleep(seconds)

    def perturb(self, step: int) -> Optional[Callable[[int, torch.Tensor], torch.Tensor]]:
        """The per-micro-batch loss hook of `Engine.accumulate` at optimizer step `step`, or None."""
        if self.nan_at != step or self.rank != 0:
            return None
        return lambda i, per_sample: per_sample * float("nan") if i == 0 else per_sample

    def kill_point(self, name: str, step: int) -> None:
        """Called at each point of a save and the export; dies there when the drill names it."""
        if self.kill_at == f"{name}:{step}" and self.rank == 0:
            os.kill(os.getpid(), signal.SIGKILL)
