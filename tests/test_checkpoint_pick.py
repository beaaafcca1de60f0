"""Which checkpoint a resume picks: never one whose save was interrupted."""

import json

import pytest

from ct_train import checkpoint
from ct_train.errors import ConfigError


def _fake(out, step, complete):
    d = out / "checkpoints" / checkpoint.tag_for(step)
    d.mkdir(parents=True)
    (d / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"x")
    if complete:
        (d / checkpoint.STATE_FILE).write_text(json.dumps({"trainer": {"step": step}}))


def test_auto_skips_incomplete_latest(tmp_path):
    _fake(tmp_path, 10, True)
    _fake(tmp_path, 20, True)
    _fake(tmp_path, 30, False)  # killed while writing
    assert checkpoint.resolve_resume("auto", str(tmp_path)) == (str(tmp_path / "checkpoints"), "step00000020")
    assert checkpoint.resolve_resume("never", str(tmp_path)) is None


def test_auto_on_fresh_dir_and_explicit_paths(tmp_path):
    assert checkpoint.resolve_resume("auto", str(tmp_path)) is None
    _fake(tmp_path, 5, True)
    tag_dir = tmp_path / "checkpoints" / "step00000005"
    assert checkpoint.resolve_resume(str(tag_dir), "/elsewhere") == (str(tmp_path / "checkpoints"), "step00000005")
    assert checkpoint.resolve_resume(str(tmp_path), "/elsewhere")[1] == "step00000005"
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        checkpoint.resolve_resume(str(tmp_path / "nothing"), "/elsewhere")


def test_rotation_keeps_newest_and_the_resumed_one(tmp_path):
    for step in (10, 20, 30, 40):
        _fake(tmp_path, step, True)
    _fake(tmp_path, 25, False)  # an interrupted save older than the newest complete one
    _fake(tmp_path, 50, False)  # a save in progress
    deleted = checkpoint.rotate(str(tmp_path), keep_last=2, protect=["step00000010"]).deleted
    assert deleted == ["step00000020", "step00000025"]
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert left == ["step00000010", "step00000030", "step00000040", "step00000050"]
    assert checkpoint.rotate(str(tmp_path), keep_last=0) == ([], [])


def test_rotation_never_deletes_a_step_directory_it_did_not_write(tmp_path):
    """`checkpoints` a symlink to a folder shared with other work: its `step00000001/notes.txt` is no
    interrupted save of ours, and used to be deleted as one (issue 35)."""
    shared = tmp_path / "shared"
    (shared / "step00000001").mkdir(parents=True)
    (shared / "step00000001" / "notes.txt").write_text("mine")
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoints").symlink_to(shared)
    for step in (2, 3):
        _fake(out, step, True)
    rotation = checkpoint.rotate(str(out), keep_last=1)
    assert rotation == (["step00000002"], ["step00000001"])
    assert (shared / "step00000001" / "notes.txt").read_text() == "mine"
