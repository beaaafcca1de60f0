import os

from ct_train.cli import strip_local_rank


def test_strips_every_local_rank_spelling(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert strip_local_rank(["--local_rank=3", "trainer.max_steps=2"]) == ["trainer.max_steps=2"]
    assert os.environ["LOCAL_RANK"] == "3"
    assert strip_local_rank(["a=1", "--local-rank", "1", "b=2"]) == ["a=1", "b=2"]
    assert strip_local_rank(["--local_rank", "x=1"]) == ["x=1"]


def test_environment_wins_over_argument(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "5")
    strip_local_rank(["--local_rank=0"])
    assert os.environ["LOCAL_RANK"] == "5"
