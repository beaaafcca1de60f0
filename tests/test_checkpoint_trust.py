"""Checkpoints that can be trusted: a manifest checked before load, a damaged newest checkpoint set
aside for the previous one, RNG state without pickle, a torn metrics line survived."""

import json
import os
import random
import socket
import time

import numpy as np
import pytest
import torch

from ct_train import checkpoint
from ct_train.errors import CheckpointError
from ct_train.logging import read_jsonl


class FakeEngine:
    """Writes and reads DeepSpeed-shaped files, as Engine.save / Engine.load do."""

    def __init__(self):
        self.loaded = None

    def save(self, ckpt_dir, tag):
        d = os.path.join(ckpt_dir, tag)
        with open(os.path.join(d, "mp_rank_00_model_states.pt"), "wb") as f:
            f.write(os.urandom(4096))
        with open(os.path.join(d, "zero_pp_rank_0_mp_rank_00_optim_states.pt"), "wb") as f:
            f.write(os.urandom(8192))

    def load(self, ckpt_dir, tag):
        self.loaded = tag


def _save(out, step):
    return checkpoint.save(FakeEngine(), str(out), step, {"trainer": {"step": step}, "world_size": 1})


def test_a_saved_checkpoint_verifies_and_lists_every_file(tmp_path):
    path = _save(tmp_path, 2)
    state = json.loads(open(os.path.join(path, checkpoint.STATE_FILE)).read())
    assert sorted(state["manifest"]) == [
        "mp_rank_00_model_states.pt",
        "rng_rank0.json",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
    ]
    assert checkpoint.damage(str(tmp_path / "checkpoints"), checkpoint.tag_for(2)) is None


@pytest.mark.parametrize(
    "harm, reason",
    [
        (lambda d: open(d / "zero_pp_rank_0_mp_rank_00_optim_states.pt", "r+b").truncate(100), "has 100 bytes"),
        (lambda d: os.remove(d / "mp_rank_00_model_states.pt"), "is missing"),
        (lambda d: _flip(d / "zero_pp_rank_0_mp_rank_00_optim_states.pt"), "differs from what was written"),
        (lambda d: (d / checkpoint.STATE_FILE).write_text("{garbage"), "unreadable"),
    ],
)
def test_auto_sets_a_damaged_newest_checkpoint_aside_and_takes_the_previous(tmp_path, harm, reason):
    _save(tmp_path, 2)
    _save(tmp_path, 4)
    newest = tmp_path / "checkpoints" / checkpoint.tag_for(4)
    harm(newest)
    choice, notes = checkpoint.pick_resume("auto", str(tmp_path))
    assert choice == (str(tmp_path / "checkpoints"), checkpoint.tag_for(2))
    assert len(notes) == 1 and checkpoint.tag_for(4) in notes[0] and reason in notes[0]
    assert not newest.exists() and (tmp_path / "checkpoints" / (checkpoint.tag_for(4) + ".damaged")).is_dir()
    # set aside for good: the next auto picks the intact one without a warning
    assert checkpoint.pick_resume("auto", str(tmp_path)) == (choice, [])


def test_a_damaged_checkpoint_named_explicitly_is_one_error(tmp_path):
    path = _save(tmp_path, 2)
    _flip(os.path.join(path, "mp_rank_00_model_states.pt"))
    with pytest.raises(
        CheckpointError, match=r"checkpoint step00000002 is damaged: mp_rank_00_model_states.pt differs"
    ):
        checkpoint.pick_resume(path, str(tmp_path / "elsewhere"))


def test_rng_state_round_trips_as_json_and_a_pickle_payload_is_never_read(tmp_path):
    path = _save(tmp_path, 2)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    # A planted pickle in the old file name would create a marker if it were ever unpickled.
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save(Payload(), os.path.join(path, "rng_rank0.pt"))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    engine = FakeEngine()
    state = checkpoint.load(engine, str(tmp_path / "checkpoints"), checkpoint.tag_for(2))
    assert engine.loaded == checkpoint.tag_for(2) and state["trainer"]["step"] == 2
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    assert not marker.exists()


def test_a_torn_last_metrics_line_is_dropped_and_a_torn_middle_one_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    with pytest.warns(UserWarning, match=r"metrics.jsonl:3: dropped a torn last line"):
        assert read_jsonl(str(path)) == [{"step": 1}, {"step": 2}]
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON line"):
        read_jsonl(str(path))


def _flip(path):
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))


def test_a_second_job_on_the_same_output_dir_is_refused_naming_the_holder(tmp_path):
    import subprocess
    import sys

    from ct_train.errors import ConfigError
    from ct_train.io import DirLock

    lock = DirLock(str(tmp_path))
    probe = (
        "import sys\nfrom ct_train.io import DirLock\nfrom ct_train.errors import ConfigError\n"
        f"try:\n    DirLock({str(tmp_path)!r})\nexcept ConfigError as e:\n    print(e); sys.exit(2)\n"
    )
    other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert other.returncode == 2, other.stderr
    assert f"trainer.output_dir={tmp_path} is in use by pid {os.getpid()} on " in other.stdout
    with pytest.raises(ConfigError, match="is in use by pid"):
        DirLock(str(tmp_path))  # another handle in this process too
    lock.release()
    again = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr  # released: free for the next job
    # A holder that is killed releases it (the kernel drops the flock): no stale lock after a kill.
    hold = f"from ct_train.io import DirLock; DirLock({str(tmp_path)!r}); import time; time.sleep(60)"
    held = subprocess.Popen([sys.executable, "-c", hold])
    try:
        deadline = time.time() + 60
        while f"pid {held.pid} " not in (tmp_path / ".lock").read_text() and time.time() < deadline:
            time.sleep(0.05)
        with pytest.raises(ConfigError, match=f"in use by pid {held.pid} "):
            DirLock(str(tmp_path))
    finally:
        held.kill()
        held.wait()
    DirLock(str(tmp_path)).release()


def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside(tmp_path):
    for step in (2, 4, 6):
        _save(tmp_path, step)
    ckpt = str(tmp_path / "checkpoints")
    assert checkpoint.set_aside_newer(ckpt, checkpoint.tag_for(2)) == [checkpoint.tag_for(4), checkpoint.tag_for(6)]
    assert [t for _, t in checkpoint.complete_tags(ckpt)] == [checkpoint.tag_for(2)]
    assert (tmp_path / "checkpoints" / (checkpoint.tag_for(6) + ".abandoned") / checkpoint.STATE_FILE).exists()
    _save(tmp_path, 4)  # the resumed run's own step 4 is the newest now, and rotation keeps what was set aside
    assert checkpoint.resolve_resume("auto", str(tmp_path))[1] == checkpoint.tag_for(4)
    checkpoint.rotate(str(tmp_path), keep_last=1)
    assert (tmp_path / "checkpoints" / (checkpoint.tag_for(6) + ".abandoned")).is_dir()


def test_wandb_online_without_a_login_is_one_line_before_the_model(tmp_path, monkeypatch):
    from ct_train.config import LoggerConfig
    from ct_train.errors import ConfigError
    from ct_train.logging import check_wandb_login

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    online = LoggerConfig(name="wandb", mode="online")
    with pytest.raises(ConfigError, match=r"logger.mode=online needs a W&B login: run `wandb login`"):
        check_wandb_login(online)
    check_wandb_login(LoggerConfig(name="wandb", mode="offline"))  # offline needs no key
    with socket.create_server(("127.0.0.1", 0)) as server:  # a reachable stand-in for the W&B server
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        (tmp_path / "netrc").write_text("machine 127.0.0.1 login user password abc\n")
        (tmp_path / "netrc").chmod(0o600)
        check_wandb_login(online)
        (tmp_path / "netrc").write_text("")
        monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
        check_wandb_login(online)


def test_wandb_online_without_a_network_is_one_line_before_the_model(monkeypatch):
    """wandb.init waited 132 s without a network, then gave a CommError traceback after the model had
    loaded (issue 35); the start now tries the server (or the proxy) for at most 10 s."""
    from ct_train.config import LoggerConfig
    from ct_train.errors import ConfigError
    from ct_train.logging import check_wandb_login

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    online = LoggerConfig(name="wandb", mode="online")
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed}")
    start = time.monotonic()
    with pytest.raises(ConfigError) as e:
        check_wandb_login(online)
    assert time.monotonic() - start < 10
    assert str(e.value) == (
        "logger=wandb logger.mode=online: cannot reach http://127.0.0.1 (Connection refused); "
        "use logger.mode=offline and `wandb sync` later"
    )
    # behind an HTTPS proxy the proxy is what must answer
    monkeypatch.setenv("WANDB_BASE_URL", "https://api.wandb.ai")
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{closed}")
    with pytest.raises(ConfigError, match=rf"cannot reach https://api.wandb.ai through the proxy 127.0.0.1:{closed}"):
        check_wandb_login(online)


def test_deepspeed_files_holding_foreign_code_are_refused_before_deepspeed_unpickles_them(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    from ct_train.engine import check_checkpoint_files

    ok = tmp_path / "ok"
    ok.mkdir()
    # what a ZeRO-2 optimizer state holds besides tensors (measured on DeepSpeed 0.19's own files)
    state = {"zero_stage": ZeroStageEnum.gradients, "loss_scaler": LossScaler(1.0), "base": torch.ones(3)}
    state["param_slice_mappings"] = [{"w": fragment_address(numel=3, start=0)}]
    torch.save(state, ok / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    check_checkpoint_files(str(ok))

    bad = tmp_path / "bad"
    bad.mkdir()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"optimizer_state_dict": Payload()}, bad / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(CheckpointError, match=r"zero_pp_rank_0_mp_rank_00_optim_states.pt: it holds .*open"):
        check_checkpoint_files(str(bad))
    assert not marker.exists()


def test_run_identity_names_what_differs_and_leaves_out_what_does_not_change_a_run():
    from ct_train.run import identity_differences

    base = {"config": {"trainer.lr": 0.001, "model.architecture.hidden_size": 64, "curriculum.eta": None}, "data": "a"}
    same = {"config": dict(base["config"]), "data": "a"}
    assert identity_differences(base, same) == []
    other_model = {"config": {**base["config"], "model.architecture.hidden_size": 128}, "data": "a"}
    assert identity_differences(base, other_model) == ["model.architecture.hidden_size 64 -> 128"]
    assert identity_differences(base, other_model, allowed=["model"]) == []  # a section prefix allows it
    other_data = {"config": {**base["config"], "trainer.lr": 0.002}, "data": "b"}
    assert identity_differences(base, other_data, allowed=["trainer.lr"]) == [
        "the data changed (its tokenised fingerprint differs)"
    ]
    new_key = {"config": {**base["config"], "curriculum.signal": "lp"}, "data": "a"}
    assert identity_differences(base, new_key) == ["curriculum.signal '(unset)' -> 'lp'"]
    # keys newer than the checkpoint: at their default they change nothing; set, they do
    newer = {"config": {**base["config"], "data.group_by_length": False, "model.lora.enabled": False}, "data": "a"}
    assert identity_differences(base, newer) == []
    grouped = {"config": {**base["config"], "data.group_by_length": True}, "data": "a"}
    assert identity_differences(base, grouped) == ["data.group_by_length '(unset)' -> True"]
    # a newer key whose default has moved since (curriculum.probe_backoff: 1, now 2): a checkpoint
    # without it ran at the legacy value, so today's default differs and the legacy value does not
    backoff = {"config": {**base["config"], "curriculum.probe_backoff": 2.0}, "data": "a"}
    assert identity_differences(base, backoff) == ["curriculum.probe_backoff 1.0 -> 2.0"]
    assert (
        identity_differences(base, {"config": {**base["config"], "curriculum.probe_backoff": 1.0}, "data": "a"}) == []
    )
    learnability = {"config": {**base["config"], "curriculum.learnability_every_steps": 30}, "data": "a"}
    assert identity_differences(base, learnability) == ["curriculum.learnability_every_steps 0 -> 30"]
    # a key operational since the checkpoint was written (data.packing, a layout): never a difference,
    # whichever side has it and whatever its value
    packed_then = {"config": {**base["config"], "data.packing": False}, "data": "a"}
    assert identity_differences(packed_then, base) == []
    assert identity_differences(packed_then, {"config": {**base["config"], "data.packing": True}, "data": "a"}) == []


def test_a_rank_whose_launcher_is_gone_raises_the_stop_flag():
    """The `deepspeed` runner forwards no signal on one node: a rank watches it and, once it is gone
    (here: a stand-in process, killed and left unreaped, then reaped), stops at the next step boundary
    as on SIGTERM."""
    import signal
    import subprocess
    import sys

    from ct_train import distributed as dist

    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dist.watch_pids([stand_in.pid], interval_s=0.05)
        time.sleep(0.3)
        assert dist.stop_requested() == 0  # alive: nothing happens
        stand_in.kill()
        deadline = time.time() + 10
        while not dist.stop_requested() and time.time() < deadline:
            time.sleep(0.05)
        assert dist.stop_requested() == signal.SIGTERM
    finally:
        stand_in.kill()
        stand_in.wait()
        dist.restore_default_signals()
    assert dist.stop_requested() == 0


def test_the_universal_conversion_is_keyed_by_the_checkpoints_content_not_its_tag(tmp_path, monkeypatch):
    """Issue 35: run C's step-4 checkpoint resumed on another number of ranks into a directory that
    already held run B's step-4 conversion loaded B's weights. The cache now names the source."""
    import subprocess

    from ct_train import engine

    calls = []

    def fake_converter(cmd, **kw):  # ds_to_universal: writes which source it converted
        src, out = cmd[cmd.index("--input_folder") + 1], cmd[cmd.index("--output_folder") + 1]
        calls.append(src)
        os.makedirs(out)
        with open(os.path.join(out, "source"), "w") as f:
            f.write(open(os.path.join(src, "weights")).read())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(engine.subprocess, "run", fake_converter)

    def make_ckpt(run, weights, step=4):
        d = tmp_path / run / "checkpoints" / checkpoint.tag_for(step)
        d.mkdir(parents=True, exist_ok=True)
        (d / "weights").write_text(weights)
        (d / checkpoint.STATE_FILE).write_text(json.dumps({"step": step, "manifest": {"weights": [1, weights]}}))
        return str(d.parent), d.name

    def convert(ckpt):
        root = engine.to_universal(*ckpt, str(tmp_path / "vX"), checkpoint.content_key(*ckpt))
        return (tmp_path / root / ckpt[1] / "source").read_text()

    b, c = make_ckpt("vB", "B-weights"), make_ckpt("vC", "C-weights")
    assert b[1] == c[1]  # the same tag
    assert convert(b) == "B-weights"
    assert convert(c) == "C-weights"  # was B's: the stale conversion was reused by tag
    assert convert(b) == "B-weights" and len(calls) == 2  # each source converted once, then reused
    make_ckpt("vB", "B-rewritten")  # step 4 rewritten after resuming an older checkpoint
    assert convert(b) == "B-rewritten" and len(calls) == 3


def test_a_damaged_newest_checkpoint_in_a_read_only_directory_is_one_error(tmp_path, monkeypatch):
    """`checkpoints/` read-only and the newest checkpoint damaged: the move aside used to end in an
    OSError traceback from os.replace (issue 35). Tests run as root, which chmod does not stop, so the
    read-only file system is os.replace's EROFS."""
    import errno

    _save(tmp_path, 2)
    path = _save(tmp_path, 4)
    _flip(os.path.join(path, "mp_rank_00_model_states.pt"))

    def read_only(src, dst):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), src)

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(CheckpointError) as e:
        checkpoint.pick_resume("auto", str(tmp_path))
    assert "\n" not in str(e.value)
    assert "checkpoint step00000004 is damaged (mp_rank_00_model_states.pt differs" in str(e.value)
    assert "could not be moved to step00000004.damaged (Read-only file system" in str(e.value)
    assert "trainer.resume=PATH" in str(e.value)
    with pytest.raises(CheckpointError, match=r"step00000004 is newer than step00000002, the one resumed from,"):
        checkpoint.set_aside_newer(str(tmp_path / "checkpoints"), checkpoint.tag_for(2))


def test_a_metrics_file_deleted_during_the_run_is_named_when_the_next_line_is_written(tmp_path, capsys):
    """It used to be recreated without a word, the earlier steps gone (issue 35)."""
    from ct_train.config import LoggerConfig
    from ct_train.logging import RunLogger

    log = RunLogger(LoggerConfig(progress_bar=False), str(tmp_path), {}, 10, 0, log_samples=False)
    log.log(1, {"loss": 1.0})
    log.log(2, {"loss": 0.9})
    assert "warning" not in capsys.readouterr().out
    os.remove(tmp_path / "metrics.jsonl")
    log.log(3, {"loss": 0.8})
    log.log(4, {"loss": 0.7})
    out = capsys.readouterr().out
    assert out.count("warning:") == 1
    assert "metrics.jsonl was deleted while the run wrote it: its lines before step 3 are gone" in out
    assert [r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))] == [3, 4]


def test_the_first_save_names_the_checkpoint_size_and_warns_when_the_disk_cannot_hold_those_to_come(
    tmp_path, monkeypatch
):
    """A 20-step SmolLM2 full tune wrote 3 x 1.6 GB without a word (issue 34)."""
    import shutil
    from collections import namedtuple

    path = _save(tmp_path, 2)
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    ckpt = str(tmp_path / "checkpoints")
    lines = checkpoint.size_note(ckpt, checkpoint.tag_for(2), keep=2, saves_left=5)
    assert len(lines) == 1 and lines[0].startswith(f"checkpoint step00000002: {size / 1000:.1f} KB (the newest 2 kept;")
    usage = namedtuple("usage", "total used free")
    # keep 2: at most 3 at once, 2 more than now; keep all: 5 more
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(0, 0, 2 * size))
    assert len(checkpoint.size_note(ckpt, checkpoint.tag_for(2), keep=2, saves_left=5)) == 1
    lines = checkpoint.size_note(ckpt, checkpoint.tag_for(2), keep=0, saves_left=5)
    assert len(lines) == 2 and lines[1].startswith("warning: the 5 checkpoint(s) still to save need about")
    assert "lower trainer.keep_last_checkpoints (now all)" in lines[1]
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(0, 0, size))
    assert "(now 2)" in checkpoint.size_note(ckpt, checkpoint.tag_for(2), keep=2, saves_left=5)[1]


def test_pretrained_weights_keep_the_newest_two_checkpoints_by_default():
    from ct_train.config import Config, ModelConfig, TrainerConfig

    assert Config(model=ModelConfig(path="/m")).keep_last_checkpoints() == 2
    assert Config().keep_last_checkpoints() == 0  # random init: small, every one kept
    assert (
        Config(model=ModelConfig(path="/m"), trainer=TrainerConfig(keep_last_checkpoints=0)).keep_last_checkpoints()
        == 0
    )
