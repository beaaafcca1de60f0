"""The CLI end to end: overrides, outputs, W&B offline, plots, and one-line errors for bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST, FAST_DATA, REPO, cli_env, run_cli
from tests.helpers import metrics

pytestmark = pytest.mark.integration


def _check_generations(out, clusters, steps):
    """generations.jsonl (issue 34): one greedy generation per cluster at every eval, the same held-out
    samples each time, in the W&B table too; the last eval's are what Hugging Face's own greedy
    `generate` gives with the exported final/ (the same weights)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert [(r["step"], r["cluster"]) for r in rows] == [(s, c) for s in steps for c in clusters]
    assert len({r["id"] for r in rows}) == len(clusters)
    assert all(r["prompt"] and r["reference"] for r in rows)
    assert list((out / "wandb").glob("offline-run-*/files/media/table/eval/generations_*.table.json"))
    model, tok = AutoModelForCausalLM.from_pretrained(out / "final"), AutoTokenizer.from_pretrained(out / "final")
    for r in rows[-len(clusters) :]:
        prompt = tok(r["prompt"], return_tensors="pt", add_special_tokens=False)
        new = model.generate(**prompt, max_new_tokens=64, do_sample=False, pad_token_id=tok.pad_token_id)[0]
        new = new[prompt["input_ids"].shape[1] :].tolist()
        new = new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new
        assert tok.decode(new, skip_special_tokens=True) == r["generation"], r["cluster"]


def test_single_process_run_writes_every_output(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        FAST
        + [
            "trainer.max_steps=4",
            "trainer.global_batch_size=8",
            "trainer.micro_batch_size=4",
            "trainer.eval_every_steps=2",
            "trainer.log_samples=true",
            "logger=wandb",
            "logger.mode=offline",
            f"trainer.output_dir={out}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "loss before" in proc.stdout and str(out) in proc.stdout  # the per-cluster table and where outputs are
    rows = metrics(out)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 4]  # eval at 0, steps 1-4 (eval at 2), final eval
    step = rows[1]
    for key in ("loss", "lr", "grad_norm", "tokens", "tokens_per_s"):
        assert isinstance(step[key], float | int), key
    assert any(k.startswith("cluster/") and k.endswith("/loss") for k in step)
    assert {"eval/add/loss", "eval/add/exact_match", "eval/loss"} <= set(rows[2])
    # token accuracy (issue 34): per cluster, and overall as their token-weighted mean
    per = [rows[-1][f"eval/{c}/token_accuracy"] for c in ("add", "reverse", "brackets", "cjk_reverse")]
    assert all(0 <= a <= 1 for a in per) and min(per) <= rows[-1]["eval/token_accuracy"] <= max(per)
    assert rows[-1]["eval/token_accuracy"] > rows[0]["eval/token_accuracy"]  # 4 steps of training help
    # the skill suite has 2 difficulty levels here: held-out metrics per level too
    assert {"eval_difficulty/1/exact_match", "eval_difficulty/2/loss"} <= set(rows[2])
    # ... and per cluster and level (4 held-out samples each): the cluster's value is their mean
    for name in ("add", "reverse", "brackets", "cjk_reverse"):
        for m in ("loss", "exact_match"):
            cells = [rows[2][f"eval/{name}/L{lv}/{m}"] for lv in (1, 2)]
            assert sum(cells) / 2 == pytest.approx(rows[2][f"eval/{name}/{m}"], rel=1e-6)
    assert rows[2]["eval/add/L1/loss"] != rows[2]["eval/add/L2/loss"]
    assert "difficulty 2" in proc.stdout
    assert rows[4]["tokens"] > rows[1]["tokens"] > 0
    resolved = (out / "config.yaml").read_text()
    assert "max_steps: 4" in resolved and "${" not in resolved
    ids = [json.loads(line) for line in (out / "samples.rank0.jsonl").read_text().splitlines()]
    assert [r["step"] for r in ids] == [1, 2, 3, 4] and all(len(r["ids"]) == 8 for r in ids)
    assert ids[0]["ids"][0].split("-")[0] in ("add", "reverse", "brackets", "cjk_reverse")
    assert list((out / "wandb").glob("offline-run-*")), "W&B offline run directory missing"
    assert (out / "final" / "model.safetensors").exists() and (out / "final" / "tokenizer.json").exists()
    assert "eval at step 2: eval/loss" in proc.stdout  # the periodic eval's one line
    _check_generations(out, ["add", "brackets", "cjk_reverse", "reverse"], [0, 2, 4])
    # The byte tokenizer has no chat template: final/ gets one rendering the training prompt (simple).
    from transformers import AutoTokenizer

    from ct_train.data.templates import tokenize_example

    exported = AutoTokenizer.from_pretrained(out / "final")
    chat = [{"role": "user", "content": "Reverse: abc"}, {"role": "assistant", "content": "cba"}]
    record = dict(prompt="Reverse: abc", input="", response="cba", messages=[])
    ids = exported.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
    assert ids == tokenize_example(record, "simple", exported, 128)["input_ids"]
    plot = subprocess.run(
        [sys.executable, "-m", "ct_train.plot", str(out)], capture_output=True, text=True, env=cli_env()
    )
    assert plot.returncode == 0, plot.stderr
    assert (out / "plots" / "loss.png").stat().st_size > 1000 and (out / "plots" / "clusters.png").exists()

    # The export is a starting point: `model=hf model.path=final/` continues from exactly those weights.
    again = tmp_path / "again"
    proc = run_cli(
        FAST_DATA
        + [
            "model=hf",
            f"model.path={out / 'final'}",
            "trainer.max_steps=1",
            "trainer.global_batch_size=8",
            "trainer.micro_batch_size=8",
            f"trainer.output_dir={again}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert metrics(again)[0]["eval/loss"] == pytest.approx(rows[-1]["eval/loss"], rel=1e-5)


def _jsonl(path: Path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def _bad_inputs(tmp: Path):
    good = '{"instruction": "a", "output": "b"}'
    not_a_number = json.dumps({"instruction": "a", "output": "b", "difficulty": "x"})
    blocker = tmp / "a_file"
    blocker.write_text("x")
    return {
        "malformed_json": (
            ["data=jsonl", f"data.path={_jsonl(tmp / 'm.jsonl', [good, '{oops'])}"],
            "m.jsonl:2: malformed JSON",
        ),
        "bad_record_error": (
            [
                "data=jsonl",
                "data.on_bad_record=error",
                f"data.path={_jsonl(tmp / 'r.jsonl', [good, json.dumps({'instruction': '', 'output': 'b'})])}",
            ],
            "r.jsonl: record 2: empty prompt",
        ),
        "empty_dataset": (["data=jsonl", f"data.path={_jsonl(tmp / 'e.jsonl', [])}"], "no usable record"),
        "missing_file": (["data=jsonl", f"data.path={tmp / 'absent.jsonl'}"], "no such file or directory"),
        "non_numeric_difficulty": (
            [
                "data=jsonl",
                f"data.path={_jsonl(tmp / 'd.jsonl', [not_a_number])}",
            ],
            "must be a number, got 'x'",
        ),
        "source_without_file": (["data=jsonl", "data.sources={qa: []}"], "data.sources.qa names no file"),
        "batch_not_divisible": (
            ["trainer.global_batch_size=10", "trainer.micro_batch_size=4"],
            "trainer.global_batch_size=10 is not divisible",
        ),
        "unwritable_output_dir": ([f"trainer.output_dir={blocker}/run"], "is not writable"),
        "bad_choice": (["trainer.lr_schedule=wavy"], "trainer.lr_schedule='wavy' is not valid"),
        # Curriculum settings the data cannot serve: refused before the model is built (issue 18).
        "mixture_unknown_cluster": (
            ["curriculum=mixture", "curriculum.weights={nosuch: 1.0}"],
            "curriculum.weights names unknown clusters ['nosuch']",
        ),
        "phased_without_difficulty": (
            ["data=jsonl", f"data.path={_jsonl(tmp / 'p.jsonl', [good] * 4)}", "curriculum=phased"],
            "needs a difficulty for every training sample (curriculum.difficulty=data)",
        ),
    }


CASES = [
    "malformed_json",
    "bad_record_error",
    "empty_dataset",
    "missing_file",
    "non_numeric_difficulty",
    "source_without_file",
    "batch_not_divisible",
    "unwritable_output_dir",
    "bad_choice",
    "mixture_unknown_cluster",
    "phased_without_difficulty",
]
BEFORE_THE_MODEL = {"mixture_unknown_cluster", "phased_without_difficulty"}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_before_training(tmp_path, case):
    args, needle = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    proc = run_cli(FAST + [f"trainer.output_dir={out}"] + args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ct-train: error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not (out / "metrics.jsonl").exists()  # nothing trained
    if case in BEFORE_THE_MODEL:
        assert "parameters, ZeRO" not in proc.stdout and "deepspeed" not in proc.stdout.lower(), proc.stdout[-2000:]


def test_unknown_key_fails_with_hydra_message_via_console_script(tmp_path):
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ct-train"), "trainer.max_stepz=3"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=cli_env(),
    )
    assert proc.returncode != 0 and "max_stepz" in proc.stderr


def test_batch_split_checked_against_the_real_world_size(tmp_path):
    # 8 = 2 ranks x 8 per micro-batch does not divide: caught once the launcher says there are 2 ranks.
    proc = run_cli(
        FAST + ["trainer.global_batch_size=8", "trainer.micro_batch_size=8", f"trainer.output_dir={tmp_path / 'o'}"],
        launcher="torchrun",
        nproc=2,
    )
    assert proc.returncode != 0
    assert (
        "ct-train: error: trainer.global_batch_size=8 is not divisible by ranks x trainer.micro_batch_size = 2 x 8"
        in proc.stderr
    )
    assert "Traceback (most recent call last)" not in proc.stderr.split("ct-train: error")[0]


def test_logger_tensorboard_writes_the_metrics_and_generations_as_event_files(tmp_path):
    """logger=tensorboard (issue 34): TensorBoard's own writer; its reader gets every scalar of
    metrics.jsonl at its step, and the generations as a text table."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = FAST + ["trainer.max_steps=3", "trainer.global_batch_size=8", "trainer.micro_batch_size=4"]
    args += ["trainer.eval_every_steps=2", "logger=tensorboard", f"trainer.output_dir={out}"]
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    rows = metrics(out)
    loss = [(e.step, e.value) for e in events.Scalars("loss")]
    assert loss == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in rows if "loss" in r]
    assert [e.step for e in events.Scalars("eval/loss")] == [r["step"] for r in rows if "eval/loss" in r]
    text = [e for e in events.Tensors("eval/generations/text_summary")]
    assert [e.step for e in text] == [0, 2, 3]
    table = text[-1].tensor_proto.string_val[0].decode()
    assert table.startswith("| cluster | id | prompt | reference | generation |") and "add-L1-eval-0" in table
