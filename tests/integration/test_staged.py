"""TAPIR through the real CLI: its alpha schedule, task ratio and per-round data are what the 2 ranks
trained (counted from samples.rank*.jsonl). Phased IFT killed in the middle of phase 2 and resumed:
tests/integration/test_faults.py::test_kill_at_any_point_of_a_save_resumes_from_the_previous_checkpoint."""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FAST, run_cli
from tests.helpers import metrics, train_rows

pytestmark = pytest.mark.integration

SHORT = FAST + [
    "data.skills.levels=3",
    "trainer.global_batch_size=8",
    "trainer.micro_batch_size=4",
    "trainer.eval_every_steps=0",
    "trainer.log_samples=true",
    "trainer.export_final=false",
    "trainer.warmup_steps=1",
]


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _steps(out: Path, ranks=(0,)) -> dict:
    """step -> ids trained in it (all ranks; the last record of a step wins, as after a resume)."""
    by_step: dict = {}
    for r in ranks:
        per_rank = {}
        for line in (out / f"samples.rank{r}.jsonl").read_text().splitlines():
            rec = json.loads(line)
            per_rank[rec["step"]] = rec["ids"]
        for s, ids in per_rank.items():
            by_step.setdefault(s, []).extend(ids)
    return by_step


def _judged(path: Path, prefix: str, n_per_cluster: int, judged: bool = True):
    """Records of 3 clusters whose judge gap (teacher - student) is 3 (hard) on every other record
    (without judge scores when not `judged`)."""
    hard = {}
    with path.open("w") as f:
        for task in ("math", "code", "chat"):
            for i in range(n_per_cluster):
                rid = f"{prefix}-{task}-{i}"
                hard[rid] = i % 2 == 0
                rec = {"id": rid, "prompt": f"{task} {i}", "response": f"ok {i}", "task": task}
                if judged:
                    rec.update(teacher_score=8, student_score=5 if hard[rid] else 8)
                f.write(json.dumps(rec) + "\n")
    return hard


def test_tapir_rounds_train_the_planned_hard_share_and_task_ratio_on_two_ranks(tmp_path):
    hard = _judged(tmp_path / "base.jsonl", "b", 40)
    _judged(tmp_path / "r3.jsonl", "r3", 12, judged=False)  # no judge scores: scored by the model's loss
    out = tmp_path / "tapir"
    _ok(
        run_cli(
            FAST[-3:]
            + [
                "logger.progress_bar=false",
                "data=jsonl",
                f"data.path={tmp_path / 'base.jsonl'}",
                "data.cluster_field=task",
                "data.judge_fields=[teacher_score,student_score]",
                "data.eval_fraction=0.1",
                "data.max_seq_len=256",
                "curriculum=tapir",
                "curriculum.difficulty=auto",
                "curriculum.delta=1",
                "curriculum.rounds=[{steps: 3, alpha: 0.25}, {steps: 3, alpha: 0.75}, "
                f"{{steps: 2, alpha: 0.5, data: {tmp_path / 'r3.jsonl'}}}]",
                "curriculum.task_weights={math: 2}",
                "curriculum.loss_weights={code: 2}",
                "trainer.max_steps=-1",
                "trainer.global_batch_size=16",
                "trainer.micro_batch_size=4",
                "trainer.log_samples=true",
                "trainer.export_final=false",
                f"trainer.output_dir={out}",
            ],
            launcher="deepspeed",
            nproc=2,
        )
    )
    steps = _steps(out, ranks=(0, 1))
    assert sorted(steps) == list(range(1, 9)) and all(len(ids) == 16 for ids in steps.values())
    for s, ids in steps.items():
        alpha = 0.25 if s <= 3 else 0.75 if s <= 6 else 0.5
        tasks = [i.split("-")[1] for i in ids]
        assert {t: tasks.count(t) for t in ("math", "code", "chat")} == {"math": 8, "code": 4, "chat": 4}
        assert all(i.startswith("r3-") for i in ids) == (s > 6)  # round 3 draws only from its own file
        for task, n in (("math", 8), ("code", 4), ("chat", 4)):  # alpha of each cluster's share is hard
            if s <= 6:
                assert sum(hard[i] for i, t in zip(ids, tasks) if t == task) == alpha * n
    rows = train_rows(out)
    assert [rows[s]["curriculum/round"] for s in range(1, 9)] == [1, 1, 1, 2, 2, 2, 3, 3]
    ends = [r["step"] for r in metrics(out) if "curriculum/stage_end" in r]
    assert ends == [3, 6, 8]
    # Round 3's file has no judge scores (difficulty=auto): both ranks scored it with the model of
    # step 6; every loss is above delta=1, so the whole round draws from its hard pools.
    scores = np.load(out / "stage_scores" / "round3.npy")
    assert len(scores) == 36 and (scores > 1).all()
    start = {k: v for r in metrics(out) for k, v in r.items() if k.startswith("curriculum/round3/")}
    assert (start["curriculum/round3/hard"], start["curriculum/round3/easy"]) == (36, 0)
    assert not (out / "stage_scores" / "round1.npy").exists()  # rounds 1 and 2 used the judge gap
