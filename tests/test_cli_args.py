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


def test_help_lists_the_groups_a_user_picks_with_examples():
    from ct_train.cli import help_text

    text = help_text("ct-train")
    assert text.startswith("usage: ct-train ") and "examples:" in text
    groups = dict(
        line.split(None, 1) for line in text.split("config groups (GROUP=OPTION):\n")[1].split("\n\n")[0].splitlines()
    )
    assert (
        groups["curriculum"] == "balanced, beyond_iid, iid, it2acl, mixture, odm, phased, tapir"
    )  # no *_schema entries
    assert "tiny" in groups["model"] and "_schema" not in text
    assert "model:\n  name: tiny" not in text  # not Hydra's config dump
    assert help_text("ct-train-score").splitlines()[2].startswith("Write the data back with a difficulty")


def test_override_errors_are_one_line_with_a_suggestion():
    from ct_train.cli import override_error

    assert override_error(["curriculum=it2acl", "trainer.max_steps=3"]) is None
    typo = override_error(["curriculum=it2alc"])
    assert typo.startswith("curriculum=it2alc: no such curriculum (did you mean curriculum=it2acl?)")
    assert "\n" not in typo and "_schema" not in typo
    assert override_error(["trainer.max_step=5"]) == "trainer.max_step: no such key (did you mean trainer.max_steps?)"
    assert override_error(["curriculum=it2acl", "curriculum.sigal=pg"]).endswith("(did you mean curriculum.signal?)")
    assert override_error(["trainer.lr=abc"]).startswith("trainer.lr=abc: Value 'abc' of type 'str' could not")


def test_a_mistyped_group_exits_2_with_one_line():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "ct_train", "curriculum=it2alc"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "ct-train: error: curriculum=it2alc: no such curriculum (did you mean curriculum=it2acl?); choose one of: "
        "balanced, beyond_iid, iid, it2acl, mixture, odm, phased, tapir"
    ]
