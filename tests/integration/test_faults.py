"""Faults a run must survive with a clear message and nothing lost (docs/reliability.md)."""

import json
import os
import re
import subprocess

import pytest

from ct_train.compose import load_config
from ct_train.engine import lr_lambda
from ct_train.plot import stage_boundaries
from tests.conftest import FAST, run_cli
from tests.helpers import metrics, samples, train_rows

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


def test_on_nonfinite_skip_discards_that_update_and_goes_on(tmp_path):
    """trainer.on_nonfinite=skip: step 2's loss is made NaN (CT_TRAIN_NAN_AT=2, rank 0's first
    micro-batch); DeepSpeed discards that update (its gradient norm is NaN) and does not advance the
    LR schedule; the run finishes with finite weights. A second NaN with max_skipped_steps=1 stops it."""
    out = tmp_path / "run"
    args = SHORT + ["trainer.on_nonfinite=skip", "trainer.warmup_steps=10", "trainer.lr_schedule=constant"]
    proc = run_cli(
        args + ["trainer.max_steps=4", "trainer.save_every_steps=2", f"trainer.output_dir={out}"],
        env={"CT_TRAIN_NAN_AT": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "non-finite loss at step 2 in samples [" in proc.stdout and "update skipped (1 so far)" in proc.stdout
    rows = train_rows(out)
    assert sorted(rows) == [1, 3, 4]
    assert [r.get("skipped_nonfinite") for r in metrics(out) if r["step"] == 2] == [1]
    # the skipped step's scheduled checkpoint is still written (issue 18: it was skipped with the step)
    saved = json.loads((out / "checkpoints/step00000002/trainer_state.json").read_text())
    assert saved["trainer"]["step"] == 2 and saved["trainer"]["skipped_steps"] == 1
    # Linear warm-up: lr after k applied updates is lr0 * (k + 1) / 10. Step 3 follows 2 applied updates.
    assert rows[3]["lr"] == pytest.approx(rows[1]["lr"] * 3 / 2)
    assert all(v == v for v in rows[4].values() if isinstance(v, float))  # no NaN reached the weights
    assert last_eval_loss(out) < 10

    again = run_cli(
        args + ["trainer.max_steps=4", "trainer.max_skipped_steps=0", f"trainer.output_dir={tmp_path / 'stop'}"],
        env={"CT_TRAIN_NAN_AT": "2"},
    )
    assert again.returncode == 3 and "non-finite loss at step 2" in again.stderr


def last_eval_loss(out):
    return [r for r in metrics(out) if "eval/loss" in r][-1]["eval/loss"]


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


# A phased curriculum (phases of 2, 3 and 1 steps over the skill levels), a checkpoint every step:
# the kill in step 4's save is in the middle of phase 2, and the run resumes from step 3.
KILL_ARGS = SHORT + [
    "data.skills.levels=3",
    "curriculum=phased",
    "curriculum.phase_steps=[2,3,1]",
    "trainer.max_steps=-1",
    "trainer.warmup_steps=1",
    "trainer.save_every_steps=1",
    "trainer.keep_last_checkpoints=1",
    "trainer.log_samples=true",
    "trainer.export_final=false",
]


def test_kill_at_any_point_of_a_save_resumes_from_the_previous_checkpoint(tmp_path):
    """...also in the middle of a curriculum phase: the resumed run trains the same phases, samples,
    learning rates and losses as an uninterrupted one, and evaluates and checkpoints at phase ends."""
    ref = tmp_path / "ref"
    proc = run_cli(KILL_ARGS + [f"trainer.output_dir={ref}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "phase1: 160 samples, mean difficulty 1, steps 0-2" in proc.stdout + proc.stderr
    # Everything of step 4's checkpoint written (every rank's DeepSpeed files, RNG and curriculum state)
    # but the marker's rename: the latest moment a kill can leave an incomplete checkpoint. (The other
    # point, after_engine_save, leaves a subset of the same files and no marker; one run is enough.)
    point = "before_marker_rename"
    out = tmp_path / point
    args = KILL_ARGS + [f"trainer.output_dir={out}"]
    killed = run_cli(args, env={"CT_TRAIN_KILL_AT": f"{point}:4"})
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL in the middle of step 4's save
    assert (out / "checkpoints/step00000003/trainer_state.json").exists()
    assert (out / "checkpoints/step00000004").is_dir()  # the incomplete checkpoint is there ...
    assert not (out / "checkpoints/step00000004/trainer_state.json").exists()  # ... without its marker
    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr and "at step 3" in resumed.stdout + resumed.stderr
    a, b = train_rows(ref), train_rows(out)
    assert sorted(b) == list(range(1, 7))
    for step in a:
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-5, abs=1e-6), step
        assert b[step]["lr"] == pytest.approx(a[step]["lr"], rel=1e-9)
        assert b[step]["curriculum/phase"] == (1 if step <= 2 else 2 if step <= 5 else 3)
    assert (out / "samples.rank0.jsonl").read_text() == (ref / "samples.rank0.jsonl").read_text()

    # Phase k trains skill level k only, easy to hard.
    for line in (ref / "samples.rank0.jsonl").read_text().splitlines():
        rec = json.loads(line)
        phase = 1 if rec["step"] <= 2 else 2 if rec["step"] <= 5 else 3
        assert {i.split("-L")[1].split("-")[0] for i in rec["ids"]} == {str(phase)}
    # The LR schedule restarts at each phase's start (the lr logged after step s is the one of step s+1).
    tr = load_config(str(ref / "config.yaml")).trainer
    schedule = lr_lambda(tr, 6, restarts=[2, 5])
    rows = train_rows(ref)
    assert [rows[s]["lr"] for s in range(1, 6)] == pytest.approx([tr.lr * schedule(s) for s in range(1, 6)], rel=1e-9)
    assert rows[4]["lr"] < rows[3]["lr"] and rows[5]["lr"] > rows[4]["lr"]  # decays in phase 2, up for phase 3
    # An eval and a checkpoint at every phase's end; the rotation keeps those (keep_last_checkpoints=1).
    ends = {r["step"]: r for r in metrics(out) if "curriculum/stage_end" in r}
    assert sorted(ends) == [2, 5, 6] and all("eval/loss" in r for r in ends.values())
    ref_ends = {r["step"]: r for r in metrics(ref) if "curriculum/stage_end" in r}
    assert ends[5]["eval/loss"] == pytest.approx(ref_ends[5]["eval/loss"], rel=1e-5)
    assert stage_boundaries(metrics(out)) == [(2, "phase 2"), (5, "phase 3")]  # drawn on the loss plots
    kept = {d: sorted(int(p.name[4:]) for p in (d / "checkpoints").glob("step*")) for d in (ref, out)}
    assert kept == {ref: [2, 5, 6], out: [2, 3, 5, 6]}  # (the resumed run also keeps its start, step 3)


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs: room for the first checkpoint of the small model, not for the second."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip()[:100]})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


# make test-slow (marker `extended`): make test keeps the unwritable-checkpoint case of the same save path
@pytest.mark.extended
def test_disk_full_during_a_save_is_a_clear_error_and_the_previous_checkpoint_loads(tmp_path, small_disk):
    out = small_disk / "run"
    args = SHORT + ["trainer.max_steps=6", "trainer.save_every_steps=2", "trainer.export_final=false"]
    proc = run_cli(args + [f"trainer.output_dir={out}"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ct-train: error:")]
    assert len(errors) == 1 and "could not write checkpoint step0000000" in errors[0], proc.stderr[-3000:]
    assert "MiB free there" in errors[0] and "Traceback" not in proc.stderr
    done = sorted(p.parent.name for p in out.glob("checkpoints/step*/trainer_state.json"))
    assert done and f"the previous checkpoint {done[-1]} is intact" in errors[0]
    # The intact checkpoint resumes elsewhere (a disk with room) and the run finishes.
    resumed = run_cli(
        args + [f"trainer.output_dir={tmp_path / 'roomy'}", f"trainer.resume={out / 'checkpoints' / done[-1]}"]
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(train_rows(tmp_path / "roomy"))[-1] == 6


def test_flipped_bytes_in_the_newest_optimizer_state_fall_back_to_the_previous_checkpoint(tmp_path):
    """The optimizer state of the newest checkpoint changes on disk (bit rot, a partial copy): the
    next start finds it in the manifest, sets that checkpoint aside with one warning, resumes from
    the one before and trains the steps again: the run ends as an uninterrupted one would."""
    out = tmp_path / "run"
    args = SHORT + ["trainer.save_every_steps=2", "trainer.export_final=false", f"trainer.output_dir={out}"]
    first = run_cli(args + ["trainer.max_steps=4"])
    assert first.returncode == 0, first.stderr[-3000:]
    optim = sorted((out / "checkpoints/step00000004").glob("*optim_states.pt"))
    assert optim, sorted(p.name for p in (out / "checkpoints/step00000004").iterdir())
    data = bytearray(optim[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    optim[0].write_bytes(bytes(data))
    resumed = run_cli(args + ["trainer.max_steps=6"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert "checkpoint step00000004 is damaged" in log and "differs from what was written" in log
    assert "resumed from" in log and "step00000002 at step 2" in log and "Traceback" not in log
    assert (out / "checkpoints/step00000004.damaged").is_dir()
    assert sorted(train_rows(out)) == [1, 2, 3, 4, 5, 6]


def test_a_different_experiment_in_the_same_dir_is_refused_and_an_allowed_lr_change_takes_effect(tmp_path):
    """Run identity: resume=auto continues only the same run. A changed trainer.lr or changed data in
    the same output dir is refused before the model loads, naming what differs, and the first run's
    config.yaml stays; allowed with trainer.resume_allow, the new lr is the one trained with."""
    out = tmp_path / "run"
    args = SHORT + ["trainer.save_every_steps=2", "trainer.export_final=false", "trainer.warmup_steps=0"]
    args += ["trainer.lr_schedule=constant", f"trainer.output_dir={out}"]
    first = run_cli(args + ["trainer.max_steps=2", "trainer.lr=0.001"])
    assert first.returncode == 0, first.stderr[-3000:]
    config = (out / "config.yaml").read_text()

    # (one refused start for both differences: each extra start costs make test ~10 s)
    refused = run_cli(args + ["trainer.max_steps=4", "trainer.lr=0.004", "data.skills.train_per_level=20"])
    errors = [line for line in refused.stderr.splitlines() if line.startswith("ct-train: error:")]
    assert refused.returncode == 2 and len(errors) == 1, refused.stderr[-3000:]
    assert "holds another run (step00000002): " in errors[0] and "trainer.lr 0.001 -> 0.004" in errors[0]
    assert "data.skills.train_per_level 40 -> 20" in errors[0] and "the data changed" in errors[0]
    assert "trainer.resume_allow" in errors[0] and "Traceback" not in refused.stderr
    assert "parameters, ZeRO" not in refused.stdout  # refused before the model was built
    assert (out / "config.yaml").read_text() == config

    allowed = run_cli(args + ["trainer.max_steps=4", "trainer.lr=0.004", "trainer.resume_allow=[trainer.lr]"])
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    rows = train_rows(out)
    assert sorted(rows) == [1, 2, 3, 4]
    assert rows[2]["lr"] == pytest.approx(0.001) and rows[3]["lr"] == pytest.approx(0.004)
    assert (out / "config.1.yaml").read_text() == config and "lr: 0.004" in (out / "config.yaml").read_text()


def test_ranks_that_read_different_data_are_refused_before_the_model_loads(tmp_path):
    """Every rank reads data.path itself. Node-local copies that differ (here: each rank's own file,
    through `${oc.env:RANK}`) are refused in one line naming the rank, before the model is built."""
    record = {"instruction": "Reverse: abc", "output": "cba"}
    for rank, extra in ((0, "abc"), (1, "abd")):
        rows = [record] * 30 + [{"instruction": f"Reverse: {extra}", "output": extra[::-1]}]
        (tmp_path / f"{rank}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = SHORT + ["data=jsonl", "trainer.max_steps=1", f"trainer.output_dir={tmp_path / 'run'}"]
    proc = run_cli(args + [f"data.path={tmp_path}/${{oc.env:RANK}}.jsonl"], launcher="deepspeed", nproc=2)
    errors = sorted({line for line in proc.stderr.splitlines() if line.startswith("ct-train: error:")})
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr[-3000:]
    assert "rank(s) [1] of 2 tokenised different data from rank 0" in errors[0]
    assert "parameters, ZeRO" not in proc.stdout and "Traceback" not in proc.stderr


def test_a_resume_onto_smaller_data_draws_whole_batches_and_keeps_the_lr_schedule(tmp_path):
    """A named checkpoint resumed with other (smaller) data: the sampler starts afresh over the new
    data (its saved cursors are positions in the old data, and once over-drew a 44-sample batch for a
    global batch of 8), so every step draws one global batch and DeepSpeed's step count and the lr
    schedule stay those of the logged step."""
    rows = [{"instruction": f"Reverse: {w}", "output": w[::-1]} for w in (f"{i:03d}abc" for i in range(64))]
    big, small = tmp_path / "big" / "data.jsonl", tmp_path / "small" / "data.jsonl"  # (one cluster: data)
    big.parent.mkdir(), small.parent.mkdir()
    big.write_text("".join(json.dumps(r) + "\n" for r in rows))
    small.write_text("".join(json.dumps(r) + "\n" for r in rows[:20]))
    args = SHORT + ["data=jsonl", "trainer.lr_schedule=cosine", "trainer.warmup_steps=0", "trainer.log_samples=true"]
    first, second = tmp_path / "first", tmp_path / "second"
    proc = run_cli(args + [f"data.path={big}", "trainer.max_steps=9", "trainer.save_every_steps=7",
                           f"trainer.output_dir={first}"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli(args + [f"data.path={small}", "trainer.max_steps=9", f"trainer.output_dir={second}",
                           f"trainer.resume={first}/checkpoints/step00000007"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the sampler and curriculum start afresh over this data" in proc.stdout + proc.stderr
    resumed, reference = train_rows(second), train_rows(first)
    assert sorted(resumed) == [8, 9]
    for step in (8, 9):  # the same schedule as the uninterrupted run at the same step
        assert resumed[step]["lr"] == pytest.approx(reference[step]["lr"])
    drawn = [r for r in samples(second, 0) if r["step"] in (8, 9)]
    assert len(drawn) == 2 and all(len(set(r["ids"])) == len(r["ids"]) == 8 for r in drawn), drawn


def test_a_stale_build_lock_is_named_and_a_stop_signal_before_training_ends_the_start_at_once(tmp_path):
    """A start killed while torch built DeepSpeed's shm op leaves `<extensions>/.../lock`; torch then
    waits on it forever, saying nothing, and SIGTERM (which only set a flag read at step boundaries)
    did not stop it. Now the lock is named with its path, and SIGTERM ends the start in seconds."""
    import signal
    import sys
    import threading
    import time

    from tests.conftest import REPO, cli_env

    lock = tmp_path / "ext" / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    env = cli_env(extra={"TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")})
    args = SHORT + ["trainer.max_steps=2", f"trainer.output_dir={tmp_path / 'run'}"]
    proc = subprocess.Popen([sys.executable, "-m", "ct_train", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    timer = threading.Timer(90, proc.kill)  # (bounded: before the fix the start waited forever, silent)
    timer.daemon = True
    timer.start()
    lines = [""]
    for line in proc.stderr:  # the message comes before DeepSpeed starts, so it is not buffered away
        lines.append(line)
        if "waiting up to" in line:
            break
    assert f"torch's extension build lock {lock}" in lines[-1], "".join(lines)[-3000:]
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    timer.cancel()
    assert proc.returncode == 4 and time.monotonic() - sent < 30, err[-3000:]
    assert "ct-train: stopped: SIGTERM before training started: nothing to save" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_the_build_lock_wait_is_bounded_and_names_what_to_delete(tmp_path, monkeypatch):
    from ct_train.engine import wait_for_extension_locks
    from ct_train.errors import UserError

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    wait_for_extension_locks(wait_s=0.1, poll_s=0.05)  # no lock: no wait, no error
    (tmp_path / "py311_cpu" / "op").mkdir(parents=True)
    (tmp_path / "py311_cpu" / "op" / "lock").write_text("")
    with pytest.raises(UserError, match=r"build lock .*py311_cpu/op/lock has been there for 0 s: .*delete that file"):
        wait_for_extension_locks(wait_s=0.1, poll_s=0.05)


def test_rank_0_start_up_work_longer_than_the_collective_timeout_does_not_crash_the_job(tmp_path):
    """The other ranks used to wait for rank 0's data preparation in a broadcast bounded by
    trainer.dist_timeout_s: data that took rank 0 longer (10 minutes at the default) crashed the job
    with 'Timed out waiting ... for recv'. They now poll the process group's store, with no cliff."""
    out = tmp_path / "run"
    args = SHORT + ["trainer.max_steps=2", "trainer.dist_timeout_s=4", f"trainer.output_dir={out}"]
    proc = run_cli(args, launcher="deepspeed", nproc=2, env={"CT_TRAIN_SLOW_START": "10"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(train_rows(out)) == [1, 2]


def test_trainer_epochs_sets_the_length_from_the_data_size(tmp_path):
    """trainer.epochs: passes over the training data (TRL's num_train_epochs). 4 clusters x 2 levels x
    8 records less the held-out ones, over a global batch of 8: the run's steps are computed, not 200."""
    from ct_train.run import steps_for_epochs

    assert steps_for_epochs(1.0, 64, 8) == 8 and steps_for_epochs(0.5, 60, 8) == 4 and steps_for_epochs(2, 3, 8) == 1
    out = tmp_path / "run"
    proc = run_cli(SHORT + ["data.skills.train_per_level=8", "trainer.epochs=0.5", f"trainer.output_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if "trainer.epochs=0.5 x " in x)
    n_train = int(line.split(" x ")[1].split(" training samples")[0].replace(",", ""))
    steps = steps_for_epochs(0.5, n_train, 8)
    assert line.endswith(f"= {steps} steps") and sorted(train_rows(out)) == list(range(1, steps + 1))


def test_early_stopping_ends_the_run_at_the_patience_and_a_rerun_does_not_train_on(tmp_path):
    """trainer.early_stopping_patience on eval/loss (HF's EarlyStoppingCallback). With lr 0 the held-out
    loss never improves: the first eval sets the best, the second is one without improvement, and
    with patience 1 the run ends there as it would at max_steps (final eval, checkpoint, export)."""
    out = tmp_path / "run"
    args = SHORT + ["trainer.lr=0", "trainer.max_steps=10", "trainer.eval_every_steps=1",
                    "trainer.early_stopping_patience=1", f"trainer.output_dir={out}"]  # fmt: skip
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "early stopping at step 2: eval/loss" in proc.stdout and "for 1 evals" in proc.stdout
    assert sorted(train_rows(out)) == [1, 2] and (out / "final").is_dir()
    assert (out / "checkpoints" / "step00000002").is_dir()
    again = run_cli(args)  # the same command: the run is done, nothing more is trained
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(train_rows(out)) == [1, 2]
    refused = run_cli(SHORT + ["trainer.early_stopping_patience=2", f"trainer.output_dir={tmp_path / 'x'}"])
    assert refused.returncode == 2 and "set trainer.eval_every_steps too" in refused.stderr


def test_a_kill_during_the_final_export_leaves_no_final_dir_and_the_rerun_exports_it(tmp_path):
    """A kill -9 while the weights are written used to leave a final/ that looked complete but lacked
    them (issue 35). The export is written as final.partial/ and renamed when whole; the same command
    again (the run is finished) exports it and a Hugging Face loader reads it."""
    out = tmp_path / "run"
    args = SHORT + ["trainer.max_steps=2", f"trainer.output_dir={out}"]
    killed = run_cli(args, env={"CT_TRAIN_KILL_AT": "during_export:2"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert re.search(r"checkpoint step00000002: [\d.]+ MB \(every one kept; [\d.]+ [KMG]B free in ", killed.stdout)
    assert not (out / "final").exists()
    assert (out / "final.partial" / "model.safetensors").exists()  # the weights, no tokenizer yet
    assert not (out / "final.partial" / "tokenizer_config.json").exists()
    again = run_cli(args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert not (out / "final.partial").exists()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoTokenizer.from_pretrained(out / "final")
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert model.config.hidden_size == 64


def test_a_killed_rank_leaves_no_shared_memory_buffer_behind(tmp_path):
    """DeepSpeed's CPU all-reduce maps a 66 MB /dev/shm buffer per rank, and a rank killed with -9
    used to leave its name there for good (issue 35); each rank now removes its name once all are
    mapped. Rank 0 SIGKILLs itself in step 1's save."""
    out = tmp_path / "run"
    args = SHORT + ["trainer.max_steps=2", "trainer.save_every_steps=1", f"trainer.output_dir={out}"]
    proc = run_cli(args, launcher="deepspeed", nproc=2, env={"CT_TRAIN_KILL_AT": "before_engine_save:1"})
    assert proc.returncode != 0 and sorted(train_rows(out)) == [1], proc.stderr[-3000:]
    port = re.search(r"master_port=(\d+)", proc.stdout + proc.stderr).group(1)
    left = [name for name in os.listdir("/dev/shm") if f"_{port}_" in name and "allreduce_buffer" in name]
    assert left == []
