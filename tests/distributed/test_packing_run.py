"""data.packing and data.group_by_length through the trainer: 2 ranks under ZeRO-3 with both on train
the same samples to the same losses as 1 rank with padded micro-batches."""

import pytest

from tests.conftest import FAST, run_cli
from tests.helpers import samples, train_rows

pytestmark = pytest.mark.distributed

COMMON = FAST + [
    "trainer.max_steps=3",
    "trainer.global_batch_size=16",
    "trainer.eval_every_steps=0",
    "trainer.save_every_steps=0",
    "trainer.export_final=false",
    "trainer.save_final=false",
    "trainer.log_samples=true",
]


def test_packed_grouped_two_ranks_train_like_padded_one_rank(tmp_path):
    padded, packed = tmp_path / "padded", tmp_path / "packed"
    proc = run_cli(COMMON + ["trainer.micro_batch_size=4", "data.packing=false", f"trainer.output_dir={padded}"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    proc = run_cli(
        COMMON
        + ["trainer.micro_batch_size=4", "data.packing=true", "data.group_by_length=true"]
        + [f"trainer.output_dir={packed}"],
        launcher="torchrun",
        nproc=2,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    one = {r["step"]: sorted(r["ids"]) for r in samples(padded, 0)}
    two = {r["step"]: sorted(r["ids"] + s["ids"]) for r, s in zip(samples(packed, 0), samples(packed, 1))}
    assert one == two and sorted(one) == [1, 2, 3]
    a, b = train_rows(padded), train_rows(packed)
    for step in (1, 2, 3):
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-5), step
        assert b[step]["grad_norm"] == pytest.approx(a[step]["grad_norm"], rel=1e-4), step
        assert b[step]["tokens"] == a[step]["tokens"]  # real tokens, not the padded ones
    assert a[3]["loss"] != a[1]["loss"]  # the steps trained
