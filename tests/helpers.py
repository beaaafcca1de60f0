"""Readers for a run's outputs, shared by the distributed and integration tests."""

import json
from pathlib import Path


def metrics(out: Path) -> list:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def train_rows(out: Path) -> dict:
    """step -> metrics row, for rows of training steps (the ones with a loss)."""
    return {r["step"]: r for r in metrics(out) if "loss" in r}


def samples(out: Path, rank: int) -> list:
    return [json.loads(line) for line in (out / f"samples.rank{rank}.jsonl").read_text().splitlines()]


def last_eval(out: Path) -> dict:
    return [r for r in metrics(out) if "eval/loss" in r][-1]
