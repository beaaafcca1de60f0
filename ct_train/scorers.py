"""The difficulty scorers, by name (the registry `scoring=<name>` is checked against in compose.py):
one function each, giving one float per sample; `ct-train-score` (ct_train.scoring) runs them.

Model-free scorers (field, length, judge_gap) read what data loading produced; the model scorers
(loss, ifd) run the distributed no-grad pass of `evaluation.sample_losses`, which gives every rank
the same number of forward calls (ZeRO-3 gathers parameters collectively and would hang otherwise).
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import numpy as np

from ct_train.config import Config
from ct_train.data import PreparedData
from ct_train.errors import DataError


def _require_all(split, values: np.ndarray, what: str, hint: str) -> np.ndarray:
    missing = np.flatnonzero(~np.isfinite(values))
    if len(missing):
        raise DataError(
            f"{len(missing)} of {len(values)} records have no {what}, first {split.describe(missing[0])}; {hint}"
        )
    return values


def field(cfg: Config, data: PreparedData, **_: Any) -> np.ndarray:
    """The difficulty already in the data (data.difficulty_field, else `difficulty` or `score`)."""
    key = cfg.data.difficulty_field or "difficulty/score"
    return _require_all(
        data.train, data.train.difficulty.copy(), f"difficulty field ({key})", "set data.difficulty_field=NAME"
    )


def length(cfg: Config, data: PreparedData, **_: Any) -> np.ndarray:
    """Response tokens the model predicts (after truncation to data.max_seq_len): a cheap baseline."""
    return data.train.n_target.astype(np.float64)


def judge_gap(cfg: Config, data: PreparedData, **_: Any) -> np.ndarray:
    """TAPIR's Model Fitting Difficulty: judge score of the teacher's response minus the student's.

    Loading computed it from `scoring.teacher_field` and `scoring.student_field` (data.judge_fields).
    """
    scoring = cfg.scoring
    return _require_all(
        data.train,
        data.train.difficulty.copy(),
        f"{scoring.teacher_field!r} and {scoring.student_field!r} judge scores",
        "set scoring.teacher_field / scoring.student_field to the fields holding them",
    )


def loss(cfg: Config, data: PreparedData, engine: Any, tokenizer: Any, **_: Any) -> np.ndarray:
    """The reference model's per-sample loss (mean over the response tokens)."""
    from ct_train.evaluation import sample_losses

    return sample_losses(engine, data.train, cfg.trainer.micro_batch_size, tokenizer.pad_token_id)


def ifd(
    cfg: Config, data: PreparedData, engine: Any, tokenizer: Any, response_only: PreparedData, **_: Any
) -> np.ndarray:
    """Instruction-following difficulty (Li et al. 2024): loss(response | prompt) / loss(response alone).

    Above 1 the prompt does not help the model predict the response. Both losses are means over
    the response tokens that survive data.max_seq_len; a sample whose response-alone loss is 0
    (no response token) gets NaN and is written without a difficulty.
    """
    from ct_train.evaluation import sample_losses

    mbs, pad = cfg.trainer.micro_batch_size, tokenizer.pad_token_id
    if len(response_only.train) != len(data.train):
        raise DataError("IFD: the response-only tokenisation lost records; report this as a bug")
    conditioned = sample_losses(engine, data.train, mbs, pad)
    alone = sample_losses(engine, response_only.train, mbs, pad)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(alone > 0, conditioned / alone, np.nan)


SCORERS: Dict[str, Callable[..., np.ndarray]] = {
    "field": field,
    "length": length,
    "loss": loss,
    "ifd": ifd,
    "judge_gap": judge_gap,
}
NEEDS_MODEL = ("loss", "ifd")
