"""Formats, detection and bad input, through the real `datasets` loading path."""

import json

import numpy as np
import pytest

from ct_train.data.loading import FileSpec, expand, load_examples
from ct_train.errors import DataError

LOAD = dict(fmt="auto", cluster_field=None, difficulty_field=None, on_bad_record="skip")


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _load(path, **kw):
    return load_examples([FileSpec(str(path))], **{**LOAD, **kw})


def test_alpaca_with_and_without_input(tmp_path):
    f = _write_jsonl(
        tmp_path / "alp.jsonl",
        [
            {"instruction": "Add", "input": "2 3", "output": "5"},
            {"instruction": "Say hi", "input": "", "output": "hi", "category": "greet"},
        ],
    )
    ds, stats = _load(f)
    assert stats == {"records": 2, "skipped_bad": 0}
    rows = ds.to_list()
    assert rows[0]["prompt"] == "Add" and rows[0]["input"] == "2 3" and rows[0]["response"] == "5"
    assert rows[0]["id"] == "alp.jsonl:0" and rows[0]["cluster"] == "alp"  # file stem when no cluster field
    assert rows[1]["cluster"] == "greet" and rows[1]["difficulty"] is None


def test_phased_score_string_becomes_difficulty(tmp_path):
    f = _write_jsonl(tmp_path / "p.jsonl", [{"id": "a1", "score": "4.25", "data": ["Do x", "Done"]}])
    row = _load(f)[0][0]
    assert row["difficulty"] == 4.25 and row["id"] == "a1" and row["response"] == "Done"


def test_sharegpt_and_messages_keep_every_turn(tmp_path):
    conv = [
        {"from": "system", "value": "Be brief"},
        {"from": "human", "value": "Q1"},
        {"from": "gpt", "value": "A1"},
        {"from": "human", "value": "Q2"},
        {"from": "gpt", "value": "A2"},
    ]
    row = _load(_write_jsonl(tmp_path / "s.jsonl", [{"conversations": conv}]))[0][0]
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    row = _load(_write_jsonl(tmp_path / "m.jsonl", [{"messages": msgs, "difficulty": 2}]))[0][0]
    assert row["messages"][1]["content"] == "yo" and row["difficulty"] == 2.0


def test_self_instruct_one_record_per_instance(tmp_path):
    task = {
        "id": "seed_task_7",
        "name": "antonyms",
        "instruction": "Give the antonym.",
        "is_classification": False,
        "instances": [{"input": "hot", "output": "cold"}, {"input": "up", "output": "down"}],
    }
    ds, stats = _load(_write_jsonl(tmp_path / "si.jsonl", [task]))
    assert stats["records"] == 2
    assert ds["id"] == ["seed_task_7:0", "seed_task_7:1"] and set(ds["cluster"]) == {"antonyms"}


def test_cluster_and_difficulty_field_overrides(tmp_path):
    f = _write_jsonl(tmp_path / "o.jsonl", [{"instruction": "a", "output": "b", "topic": "math", "hardness": 3}])
    row = _load(f, cluster_field="topic", difficulty_field="hardness")[0][0]
    assert row["cluster"] == "math" and row["difficulty"] == 3.0


def test_sources_force_cluster(tmp_path):
    f = _write_jsonl(tmp_path / "x.jsonl", [{"instruction": "a", "output": "b", "cluster": "ignored"}])
    ds, _ = load_examples(expand("data.sources.qa", [str(f)], cluster="qa"), **LOAD)
    assert ds["cluster"] == ["qa"]


def test_malformed_json_line_names_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON"):
        _load(f)


def test_invalid_utf8_and_deep_nesting_name_file_and_line(tmp_path):
    """Both reached pyarrow before: invalid UTF-8 inside a string was an uncaught UnicodeDecodeError
    while reading the records, and ~20,000 levels of nesting crash pyarrow's reader outright."""
    good = json.dumps({"instruction": "a", "output": "b"}) + "\n"
    f = tmp_path / "latin.jsonl"
    f.write_bytes(good.encode() * 2 + b'{"instruction": "caf\xe9", "output": "b"}\n')
    with pytest.raises(DataError, match=r"latin.jsonl:3: not UTF-8 text \(invalid continuation byte at byte 20"):
        _load(f)
    deep = tmp_path / "deep.jsonl"
    nested = "[" * 300 + "]" * 300
    deep.write_text(good + json.dumps({"instruction": "a", "output": "b"})[:-1] + f', "x": {nested}}}\n')
    with pytest.raises(DataError, match=r"deep.jsonl:2: a record nested deeper than 200 levels"):
        _load(deep)
    brackets_in_text = tmp_path / "text.jsonl"  # brackets inside strings are text, not nesting
    _write_jsonl(brackets_in_text, [{"instruction": "[" * 500, "output": "{" * 500}])
    assert len(_load(brackets_in_text)[0]) == 1


def test_bad_records_skipped_and_counted_or_fatal(tmp_path):
    f = _write_jsonl(
        tmp_path / "b.jsonl",
        [{"instruction": "a", "output": "b"}, {"instruction": "", "output": "x"}, {"instruction": "c", "output": ""}],
    )
    ds, stats = _load(f)
    assert len(ds) == 1 and stats["skipped_bad"] == 2
    with pytest.raises(DataError, match=r"b.jsonl: record 2: empty prompt.*on_bad_record=error"):
        _load(f, on_bad_record="error")


def test_skipped_records_are_counted_by_reason_and_named(tmp_path):
    from ct_train.data.prepare import PreparedData

    rows = [{"instruction": "a", "output": "b"}] + [{"instruction": f"q{i}", "output": ""} for i in range(5)]
    rows.insert(2, {"instruction": "", "output": "x"})
    skipped = {}
    ds, stats = _load(_write_jsonl(tmp_path / "c.jsonl", rows), skipped=skipped)
    assert len(ds) == 1 and stats["skipped_bad"] == 6
    assert skipped == {
        "empty response/output": ["c.jsonl:2", "c.jsonl:4", "c.jsonl:5", "c.jsonl:6", "c.jsonl:7"],
        "empty prompt/instruction": ["c.jsonl:3"],
    }
    note = PreparedData(train=None, eval=None, clusters=[], template="alpaca", skipped=skipped).skipped_note()
    assert note == (
        "skipped 6 records: empty response/output 5 (c.jsonl:2, c.jsonl:4, c.jsonl:5, ...); "
        "empty prompt/instruction 1 (c.jsonl:3)"
    )


def test_non_numeric_difficulty_names_record(tmp_path):
    f = _write_jsonl(tmp_path / "d.jsonl", [{"instruction": "a", "output": "b", "difficulty": "hard"}])
    with pytest.raises(
        DataError, match=r"d.jsonl: record 1: difficulty field 'difficulty' must be a number, got 'hard'"
    ):
        _load(f)


def test_empty_and_missing_inputs(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no usable record"):
        _load(empty)
    with pytest.raises(DataError, match="data.path: no such file or directory: .*nope.jsonl"):
        expand("data.path", [str(tmp_path / "nope.jsonl")])
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="holds no"):
        expand("data.path", [str(tmp_path / "d")])


def test_unknown_fields_ask_for_format(tmp_path):
    with pytest.raises(DataError, match="cannot tell the format"):
        _load(_write_jsonl(tmp_path / "u.jsonl", [{"question": "a", "answer": "b"}]))


def test_parquet_and_directory(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"instruction": "a", "output": "b"}]).to_parquet(str(tmp_path / "one.parquet"))
    _write_jsonl(tmp_path / "two.jsonl", [{"prompt": "p", "response": "r"}])
    ds, stats = load_examples(expand("data.path", [str(tmp_path)]), **LOAD)
    assert stats["records"] == 2 and sorted(ds["cluster"]) == ["one", "two"]


def test_trl_prompt_completion_standard_and_conversational(tmp_path):
    """Issue 34: TRL's prompt-completion rows were refused with `cannot tell the format`."""
    standard = _write_jsonl(tmp_path / "std.jsonl", [{"prompt": "The sky is", "completion": " blue."}])
    row = _load(standard)[0][0]
    assert row["prompt"] == "The sky is" and row["response"] == "blue." and row["messages"] == []
    conv = {
        "prompt": [{"role": "system", "content": "Brief."}, {"role": "user", "content": "Colour of the sky?"}],
        "completion": [{"role": "assistant", "content": "Blue."}],
    }
    mixed = {"prompt": "Hi", "completion": [{"role": "assistant", "content": "Hello."}]}
    rows = _load(_write_jsonl(tmp_path / "conv.jsonl", [conv, mixed]))[0].to_list()
    assert [m["role"] for m in rows[0]["messages"]] == ["system", "user", "assistant"]
    assert rows[0]["messages"][2]["content"] == "Blue." and rows[1]["messages"][0] == {"role": "user", "content": "Hi"}
    with pytest.raises(DataError, match="record 1: 'completion' must be a string or a list"):
        _load(_write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "completion": 3}]), on_bad_record="error")


def test_trl_text_format_is_refused_with_what_to_give_instead(tmp_path):
    with pytest.raises(DataError, match=r"t\.jsonl: a `text` column is TRL's language-modelling format"):
        _load(_write_jsonl(tmp_path / "t.jsonl", [{"text": "all of it"}]))


def test_sharegpt_top_level_system_becomes_the_first_message(tmp_path):
    conv = [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]
    row = _load(_write_jsonl(tmp_path / "s.jsonl", [{"system": "You are terse.", "conversations": conv}]))[0][0]
    assert row["messages"][0] == {"role": "system", "content": "You are terse."}
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]


def test_csv_and_gzipped_json_lines(tmp_path):
    import gzip

    (tmp_path / "a.csv").write_text('instruction,output\nAdd 2 and 3,5\n"Say ""hi""",hi\n', encoding="utf-8")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    ds, stats = load_examples(expand("data.path", [str(tmp_path)]), **LOAD)
    assert stats["records"] == 3 and sorted(ds["response"]) == ["5", "c", "hi"]
    assert 'Say "hi"' in ds["prompt"]
    with gzip.open(tmp_path / "bad.jsonl.gz", "wt") as f:
        f.write('{"prompt": "p", "completion": "c"}\n{"prompt": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl\.gz:2: malformed JSON"):
        _load(tmp_path / "bad.jsonl.gz")
    (tmp_path / "bad.csv").write_text('instruction,output\n"a,b\nc,d\n')  # an unclosed quote
    with pytest.raises(DataError, match=r"bad\.csv: could not be read \(Error tokenizing data.*EOF inside string"):
        _load(tmp_path / "bad.csv")


# The real public files in ../shared/data.


def test_real_phased_ift_stage3(shared_data):
    ds, stats = _load(shared_data / "alpaca52k-gpt4-scored-stage3.jsonl")
    assert stats["records"] + stats["skipped_bad"] == 6889
    assert min(ds["difficulty"]) >= 3.5 and max(ds["difficulty"]) <= 5.0


def test_real_chinese_alpaca(shared_data):
    ds, stats = _load(shared_data / "alpaca-zh-2k.json")
    assert stats["records"] + stats["skipped_bad"] == 2000 and stats["records"] > 1900
    assert any("\u4e00" <= ch <= "\u9fff" for ch in ds[0]["prompt"] + ds[0]["response"])


def test_real_self_instruct_seed_tasks(shared_data):
    path = shared_data / "self-instruct-seed-tasks.jsonl"
    tasks = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    ds, stats = _load(path)
    assert stats["records"] + stats["skipped_bad"] == sum(len(t["instances"]) for t in tasks)
    assert set(ds["cluster"]) == {t["name"] for t in tasks}  # the task name is the cluster


def test_no_response_token_within_max_seq_len_is_an_error_not_a_silent_zero_loss(tmp_path):
    from ct_train.config import DataConfig
    from ct_train.data import byte_tokenizer, prepare_data

    f = _write_jsonl(tmp_path / "a.jsonl", [{"prompt": "Add 2 and 3", "response": "5"}] * 3)
    cfg = DataConfig(name="jsonl", path=str(f), eval_fraction=0.0, max_seq_len=40)  # the template alone is longer
    with pytest.raises(DataError, match="no training sample keeps a response token within data.max_seq_len=40"):
        prepare_data(cfg, byte_tokenizer())
    assert (
        prepare_data(DataConfig(name="jsonl", path=str(f), eval_fraction=0.0), byte_tokenizer()).train.n_target.min()
        > 0
    )


def test_probe_split_is_held_out_of_train_and_eval_per_cluster_and_fixed_by_id(tmp_path):
    from ct_train.config import DataConfig
    from ct_train.data import byte_tokenizer, prepare_data

    recs = [{"id": f"r{i}", "prompt": f"q{i}", "response": "a", "cluster": f"c{i % 3}"} for i in range(90)]
    f = _write_jsonl(tmp_path / "a.jsonl", recs)
    cfg = DataConfig(name="jsonl", path=str(f), eval_fraction=0.1, cluster_field="cluster")
    data = prepare_data(cfg, byte_tokenizer(), probe_per_cluster=4)
    ids = {
        name: set(split.dataset["id"])
        for name, split in (("train", data.train), ("eval", data.eval), ("probe", data.probe))
    }
    assert len(ids["probe"]) == 12 and np.bincount(data.probe.cluster_ids).tolist() == [4, 4, 4]
    assert not ids["probe"] & ids["train"] and not ids["probe"] & ids["eval"] and len(ids["train"]) == 90 - 9 - 12
    # Fixed by the record ids: more records in the file keep the same probe samples of each cluster
    # (a new one enters only if its hash ranks higher).
    plain = prepare_data(cfg, byte_tokenizer())
    assert plain.probe is None and set(plain.eval.dataset["id"]) == ids["eval"]
    again = prepare_data(cfg, byte_tokenizer(), probe_per_cluster=4)
    assert set(again.probe.dataset["id"]) == ids["probe"]


def test_a_list_cluster_and_a_boolean_difficulty_are_named_with_their_record(tmp_path):
    """A cluster given as a list used to become a cluster named "['a', 'b']", and `true` a difficulty
    of 1.0; both are one line naming the file and record now."""
    f = _write_jsonl(tmp_path / "l.jsonl", [{"instruction": "a", "output": "b", "category": ["x", "y"]}] * 2)
    with pytest.raises(DataError, match=r"l.jsonl: record 1: cluster field 'category' must be one name .*\['x', 'y'\]"):
        _load(f)
    g = _write_jsonl(tmp_path / "t.jsonl", [{"instruction": "a", "output": "b", "difficulty": True}] * 2)
    with pytest.raises(DataError, match=r"t.jsonl: record 1: difficulty field 'difficulty' must be a number, got True"):
        _load(g)
    numbers = _write_jsonl(tmp_path / "n.jsonl", [{"instruction": "a", "output": "b", "category": 7, "difficulty": 2}])
    assert _load(numbers)[0].to_list()[0]["cluster"] == "7"


def test_a_file_mixing_alpaca_and_chat_records_reads_each_by_its_own_fields(tmp_path):
    """The file's columns are the union of its records' fields, so detection says `messages`; the
    Alpaca rows used to be dropped as "empty prompt/instruction" (issue 35)."""
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    f = _write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"messages": msgs},
            {"instruction": "Add", "input": "2 3", "output": "5"},
            {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
            {"prompt": "P", "completion": "C"},
        ],
    )
    ds, stats = _load(f)
    assert stats == {"records": 4, "skipped_bad": 0}
    rows = ds.to_list()
    assert rows[0]["messages"][1]["content"] == "yo"
    assert (rows[1]["prompt"], rows[1]["input"], rows[1]["response"]) == ("Add", "2 3", "5")
    assert [m["role"] for m in rows[2]["messages"]] == ["user", "assistant"]
    assert (rows[3]["prompt"], rows[3]["response"]) == ("P", "C")
    # a format set by data.format still applies to every record: the Alpaca row is unusable as chat
    ds, stats = _load(f, fmt="messages")
    assert stats["skipped_bad"] == 3 and stats["records"] == 1


def test_a_number_out_of_range_is_named_with_its_line(tmp_path):
    """pyarrow refuses a number it cannot hold (1e400) with a message naming
    neither file nor line; we name both (issue 35)."""
    rows = [{"instruction": "a", "output": "b", "difficulty": 1}] * 3
    f = tmp_path / "big.jsonl"
    f.write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + '{"instruction": "a", "output": "b", "difficulty": 1e400}\n'
    )
    with pytest.raises(DataError, match=r"big.jsonl:4: the number 1e400 is out of range"):
        _load(f)


def test_data_columns_map_a_files_own_field_names(tmp_path):
    """data.columns (ours -> the file's), as axolotl's and LLaMA-Factory's column mappings (issue 34)."""
    from ct_train.config import DataConfig
    from ct_train.errors import ConfigError

    f = _write_jsonl(tmp_path / "q.jsonl", [{"question": "Q", "answer": "A", "topic": "t"}])
    row = _load(f, columns={"prompt": "question", "response": "answer", "cluster": "topic"})[0][0]
    assert (row["prompt"], row["response"], row["cluster"]) == ("Q", "A", "t")
    with pytest.raises(DataError, match="cannot tell the format"):
        _load(f)  # unmapped, the same file is not instruction data
    g = _write_jsonl(tmp_path / "c.jsonl", [{"prompt": "P", "question": "Q", "answer": "A"}])
    with pytest.raises(DataError, match="renames a field to 'prompt', which the file already has"):
        _load(g, columns={"prompt": "question", "response": "answer"})
    with pytest.raises(ConfigError, match=r"data.columns: \['question'\] name no field ct_train reads"):
        DataConfig(name="jsonl", path="x.jsonl", columns={"question": "q"}).validate()


def test_tool_call_turns_are_skipped_under_their_own_name(tmp_path):
    """ShareGPT's function_call/observation turns and OpenAI-style tool messages were skipped as an
    "unknown speaker", their reason shown only with data.on_bad_record=error (issue 34)."""
    from ct_train.data.prepare import PreparedData

    calls = [
        {"from": "human", "value": "weather?"},
        {"from": "function_call", "value": '{"name": "weather"}'},
        {"from": "observation", "value": "sunny"},
        {"from": "gpt", "value": "It is sunny."},
    ]
    tool = [
        {"role": "user", "content": "2+2?"},
        {"role": "tool", "content": "4"},
        {"role": "assistant", "content": "4"},
    ]
    plain = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]
    skipped = {}
    f = _write_jsonl(tmp_path / "t.jsonl", [{"conversations": calls}, {"conversations": plain}])
    ds, stats = _load(f, skipped=skipped)
    assert stats == {"records": 1, "skipped_bad": 1}
    g = _write_jsonl(tmp_path / "m.jsonl", [{"messages": tool}, {"messages": tool}])
    with pytest.raises(DataError, match=r"no usable record in .*m.jsonl \(2 unusable records skipped\)"):
        _load(g, skipped=skipped)
    note = PreparedData(train=None, eval=None, clusters=[], template="", skipped=skipped).skipped_note()
    assert "tool-call turns (function_call) are not trained (ct_train renders no tool calls)" in note
    assert "tool-call turns (tool) are not trained" in note and "m.jsonl:1, m.jsonl:2" in note
    with pytest.raises(DataError, match=r"t.jsonl: record 1: tool-call turns \(function_call\) are not trained"):
        _load(f, on_bad_record="error")
