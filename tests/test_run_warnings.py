"""What a user is warned about before a run starts: skipped records, no held-out set, one-sample
clusters, a bandit with nothing to choose, sequences longer than the model's positions."""

import json

import pytest

from ct_train.config import Config, DataConfig, ModelConfig, TrainerConfig
from ct_train.curriculum.it2acl import IT2ACLConfig
from ct_train.data import byte_tokenizer, load_tokenizer, prepare_data
from ct_train.errors import ConfigError
from ct_train.modeling import max_positions
from ct_train.run import data_warnings


def _data(tmp_path, rows, **kw):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(name="jsonl", path=str(path), template="simple", **kw)
    return cfg, prepare_data(cfg, byte_tokenizer())


def test_a_clean_setting_warns_of_nothing(tmp_path):
    rows = [{"instruction": f"q{i}", "output": "a", "cluster": "ab"[i % 2]} for i in range(40)]
    data_cfg, data = _data(tmp_path, rows, cluster_field="cluster", eval_fraction=0.2, max_seq_len=64)
    cfg = Config(data=data_cfg, curriculum=IT2ACLConfig(), trainer=TrainerConfig(max_steps=3, global_batch_size=32))
    assert data_warnings(cfg, cfg.curriculum.needs(), data, positions=1024) == []  # 96 samples: 3 passes


def test_each_warning_names_what_to_change(tmp_path):
    rows = [{"instruction": f"q{i}", "output": "a"} for i in range(6)] + [{"instruction": "q", "output": ""}]
    data_cfg, data = _data(tmp_path, rows, eval_fraction=0.0, max_seq_len=2048)
    cfg = Config(model=ModelConfig(name="hf", path="/pretrained"), data=data_cfg, curriculum=IT2ACLConfig())
    found = data_warnings(cfg, cfg.curriculum.needs(), data, positions=1024)
    assert found[0] == "skipped 1 records: empty response/output 1 (d.jsonl:7)"
    assert found[1].startswith("no held-out samples")
    assert found[2].startswith("curriculum=it2acl chooses among clusters, but the data has one (d)")
    steps, batch = cfg.trainer.max_steps, cfg.trainer.global_batch_size
    assert found[3] == (
        f"trainer.max_steps={steps} x global batch {batch} = {steps * batch:,} samples over 6 training samples: "
        f"about {steps * batch / 6:.0f} passes over the data (lower trainer.max_steps to train fewer)"
    )
    assert found[4].startswith("data.max_seq_len=2048 exceeds the model's max_position_embeddings=1024")
    assert len(found) == 5
    # a model built at random init learns every position it is trained on: no positions warning
    scratch = Config(data=data_cfg, curriculum=IT2ACLConfig())
    assert not any("max_position" in w for w in data_warnings(scratch, scratch.curriculum.needs(), data, 1024))
    # iid chooses nothing: no bandit warning
    assert not any(
        "chooses" in w for w in data_warnings(Config(data=data_cfg), Config().curriculum.needs(), data, 1024)
    )


def test_clusters_with_one_sample_are_named(tmp_path):
    rows = [{"instruction": f"q{i}", "output": "a", "cluster": "big"} for i in range(20)]
    rows += [
        {"instruction": "x", "output": "a", "cluster": "lone"},
        {"instruction": "y", "output": "a", "cluster": "solo"},
    ]
    data_cfg, data = _data(tmp_path, rows, cluster_field="cluster", eval_fraction=0.0, max_seq_len=64)
    found = data_warnings(Config(data=data_cfg), Config().curriculum.needs(), data, None)
    assert "2 of 3 clusters have one training sample (lone, solo)" in found


def test_max_positions_and_a_missing_model_path(tmp_path):
    assert max_positions(ModelConfig(architecture={"model_type": "llama", "max_position_embeddings": 77})) == 77
    with pytest.raises(ConfigError, match=r"model.path=.*nope does not exist: expected a local Hugging Face model"):
        load_tokenizer(None, str(tmp_path / "nope"))


@pytest.mark.parametrize("rank,shown", [("0", True), ("1", False)])
def test_only_rank_0_prints_the_data_progress_bars(tmp_path, monkeypatch, capfd, rank, shown):
    import datasets

    monkeypatch.setenv("RANK", rank)
    rows = [{"instruction": f"q{i} {rank}", "output": "a"} for i in range(30)]  # own file: no cache hit
    _data(tmp_path, rows, eval_fraction=0.1, max_seq_len=64)
    assert ("tokenise train" in capfd.readouterr().err) is shown
    assert datasets.is_progress_bar_enabled()  # restored for whatever runs next in this process
