"""Faults a run must survive with a clear message and nothing lost (docs/reliability.md)."""

import pytest

from tests.conftest import FAST, run_cli
from tests.helpers import metrics, train_rows

pytestmark = pytest.mark.integration

SHORT = FAST + ["trainer.global_batch_size=8", "trainer.micro_batch_size=4", "trainer.eval_every_steps=0"]


def test_nonfinite_loss_stops_before_the_update_and_names_the_samples(tmp_path):
    out = tmp_path / "run"
    # SGD with lr 1e30 sends the weights to ~1e30 after step 1: the logits of step 2 overflow.
    proc = run_cli(
        SHORT
        + [
            "trainer.optimizer=sgd",
            "trainer.lr=1e30",
            "trainer.grad_clip=0",
            "trainer.warmup_steps=0",
            "trainer.lr_schedule=constant",
            "trainer.save_every_steps=1",
            "trainer.max_steps=5",
            f"trainer.output_dir={out}",
        ]
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ct-train: error:")]
    assert len(errors) == 1 and "non-finite loss at step 2 in samples [" in errors[0]
    assert "last complete checkpoint is step00000001" in errors[0] and "Traceback" not in proc.stderr
    assert sorted(train_rows(out)) == [1]  # step 2 was neither applied nor logged
    assert (out / "checkpoints/step00000001/trainer_state.json").exists()


def test_unwritable_checkpoint_is_a_clear_error_and_the_previous_one_resumes(tmp_path):
    out = tmp_path / "run"
    args = SHORT + [
        "trainer.max_steps=6",
        "trainer.save_every_steps=2",
        "trainer.keep_last_checkpoints=1",
        f"trainer.output_dir={out}",
    ]
    blocker = out / "checkpoints" / "step00000004"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the step-4 checkpoint directory should go")
    proc = run_cli(args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ct-train: error:")]
    assert len(errors) == 1 and "could not write checkpoint step00000004" in errors[0]
    assert "the previous checkpoint step00000002 is intact" in errors[0]
    assert (out / "checkpoints/step00000002/trainer_state.json").exists()

    blocker.unlink()  # the user fixes the disk, then reruns the same command
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout + proc.stderr
    assert sorted(train_rows(out)) == list(range(1, 7))
    assert [r["step"] for r in metrics(out) if "loss" in r] == list(range(1, 7))  # no duplicated steps
    # keep_last_checkpoints=1: the final one is kept, and step 2, which this run resumed from; 4 went
    assert sorted(p.name for p in (out / "checkpoints").glob("step*")) == ["step00000002", "step00000006"]
