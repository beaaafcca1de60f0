"""The model-free scorers and what a scoring run writes, in-process through the real data path."""

import json

import numpy as np
import pytest

from ct_train.config import Config, DataConfig, ModelConfig, ScoringConfig, TrainerConfig
from ct_train.data import byte_tokenizer, prepare_data
from ct_train.errors import DataError
from ct_train.scorers import SCORERS
from ct_train.scoring import data_fingerprint, model_fingerprint, output


def _write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _prepare(path, **data):
    cfg = DataConfig(name="jsonl", path=str(path), eval_fraction=0.0, **data)
    return prepare_data(cfg, byte_tokenizer(), keep_text=True)


JUDGED = [
    {"prompt": "Sum 2 and 3", "response": "5", "task": "math", "teacher_score": 9, "student_score": 4},
    {
        "prompt": "Say hello",
        "response": "Hello there, friend",
        "task": "chat",
        "teacher_score": "8",
        "student_score": 8,
    },
    {"prompt": "Reverse abc", "response": "cba", "task": "code", "teacher_score": 7.5, "student_score": 2.5},
]


def test_judge_gap_is_teacher_minus_student_and_a_missing_score_names_the_record(tmp_path):
    f = _write(tmp_path / "judged.jsonl", JUDGED)
    data = _prepare(f, judge_fields=["teacher_score", "student_score"])
    cfg = Config(data=DataConfig(name="jsonl", path=str(f)), scoring=ScoringConfig(name="judge_gap"))
    assert SCORERS["judge_gap"](cfg, data).tolist() == [5.0, 0.0, 5.0]
    f2 = _write(tmp_path / "half.jsonl", JUDGED[:2] + [{**JUDGED[2], "student_score": None}])
    with pytest.raises(DataError, match=r"1 of 3 records have no 'teacher_score' and 'student_score'.*half.jsonl:2"):
        SCORERS["judge_gap"](cfg, _prepare(f2, judge_fields=["teacher_score", "student_score"]))
    bad = _write(tmp_path / "bad.jsonl", JUDGED[:1] + [{**JUDGED[1], "teacher_score": "good"}])
    with pytest.raises(DataError, match=r"bad.jsonl: record 2: difficulty field 'teacher_score' must be a number"):
        _prepare(bad, judge_fields=["teacher_score", "student_score"])


def test_field_and_length_scorers(tmp_path):
    f = _write(tmp_path / "scored.jsonl", [{**r, "difficulty": i + 1} for i, r in enumerate(JUDGED)])
    data = _prepare(f)
    cfg = Config(data=DataConfig(name="jsonl", path=str(f)))
    assert SCORERS["field"](cfg, data).tolist() == [1.0, 2.0, 3.0]
    # response tokens the model predicts: bytes of the response + the end-of-sequence token
    assert SCORERS["length"](cfg, data).tolist() == [len(r["response"]) + 1 for r in JUDGED]
    with pytest.raises(DataError, match=r"3 of 3 records have no difficulty field \(difficulty/score\), first"):
        SCORERS["field"](cfg, _prepare(_write(tmp_path / "plain.jsonl", JUDGED)))


def test_output_reads_back_with_the_same_records_and_difficulty(tmp_path):
    f = _write(tmp_path / "judged.jsonl", JUDGED)
    data = _prepare(f, cluster_field="task")
    scores = np.array([0.5, np.nan, 2.0])
    for ext in ("jsonl", "parquet"):
        path = str(tmp_path / f"out.{ext}")
        output.write_records(output.records(data.train.dataset, scores, "loss", "abc123"), path)
        back = _prepare(path)  # the loader reads its `difficulty` and `cluster` fields
        assert back.train.dataset["id"] == data.train.dataset["id"]
        assert back.train.dataset["input_ids"] == data.train.dataset["input_ids"]  # same prompts and responses
        assert back.clusters == ["chat", "code", "math"]
        assert np.array_equal(back.train.difficulty, scores, equal_nan=True)
    out = output.cluster_summary(scores, data.train.cluster_ids, data.clusters)
    assert out == {
        "code": {"n": 1, "mean": 2.0, "p10": 2.0, "p50": 2.0, "p90": 2.0},
        "math": pytest.approx(out["math"]),
    }
    assert "chat" not in out  # its only record has no score
    png = tmp_path / "h.png"
    output.histogram(str(png), scores, data.train.cluster_ids, data.clusters, "t")
    assert png.stat().st_size > 1000


def test_the_data_fingerprint_changes_with_the_tokens(tmp_path):
    f = _write(tmp_path / "a.jsonl", JUDGED)
    a = data_fingerprint(_prepare(f).train.dataset)
    assert data_fingerprint(_prepare(f).train.dataset) == a
    changed = [dict(JUDGED[0], response="6")] + JUDGED[1:]
    assert data_fingerprint(_prepare(_write(tmp_path / "b.jsonl", changed)).train.dataset) != a
    longest = max(len(ids) for ids in _prepare(f).train.dataset["input_ids"])
    cfg = DataConfig(name="jsonl", path=str(f), eval_fraction=0.0, max_seq_len=longest - 2)
    assert data_fingerprint(prepare_data(cfg, byte_tokenizer()).train.dataset) != a  # data.max_seq_len cut tokens


def test_the_model_fingerprint_names_the_weights(tmp_path):
    tok = byte_tokenizer()
    arch = {"model_type": "llama", "hidden_size": 64}
    base = model_fingerprint(Config(model=ModelConfig(architecture=arch)), tok)
    assert model_fingerprint(Config(model=ModelConfig(architecture=dict(arch))), tok) == base
    assert model_fingerprint(Config(model=ModelConfig(architecture=arch), trainer=TrainerConfig(seed=7)), tok) != base
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "model.safetensors").write_bytes(b"0" * 10)
    on_disk = model_fingerprint(Config(model=ModelConfig(path=str(model))), tok)
    (model / "model.safetensors").write_bytes(b"0" * 11)  # new weights
    assert model_fingerprint(Config(model=ModelConfig(path=str(model))), tok) != on_disk
