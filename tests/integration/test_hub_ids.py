"""Hub ids (`model.path=org/name`) from a pre-filled local Hugging Face cache, as on an offline cluster
(issue 34): the snapshot is used, nothing is downloaded, and an id missing from the cache is one line."""

import json

import pytest
import torch
import yaml

from tests.conftest import FAST_DATA, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A cache laid out as huggingface_hub writes it: models--<org>--<name>/snapshots/<rev>/, refs/main."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ct_train.data import byte_tokenizer

    cache = tmp_path_factory.mktemp("hub")
    repo = cache / "models--ct-test--tiny-llama"
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    tok = byte_tokenizer()
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "llama", vocab_size=264, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(snapshot)
    tok.save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    return cache


def test_a_hub_id_trains_from_the_local_cache_offline(tmp_path, hub_cache):
    out = tmp_path / "run"
    args = FAST_DATA + ["model=hf", "model.path=ct-test/tiny-llama", f"trainer.output_dir={out}"]
    args += ["trainer.max_steps=2", "trainer.global_batch_size=4", "trainer.micro_batch_size=4"]
    args += ["trainer.eval_every_steps=0", "trainer.save_every_steps=0", "trainer.export_final=false"]
    env = {"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}
    proc = run_cli(args, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["path"] == "ct-test/tiny-llama"  # the run's record keeps the id

    missing = run_cli(FAST_DATA + ["model=hf", "model.path=ct-test/not-cached", f"trainer.output_dir={out}2"], env=env)
    assert missing.returncode == 2
    line = missing.stderr.strip().splitlines()[-1]
    assert "model.path=ct-test/not-cached is neither a local directory nor in the local Hugging Face cache" in line
    assert str(hub_cache) in line and "nothing is downloaded" in line and "Traceback" not in missing.stderr


def test_a_hub_dataset_id_reads_its_train_files_from_the_local_cache_offline(tmp_path, hub_cache):
    """`data.path=org/name` as `datasets--org--name/snapshots/<rev>/` (split shards under data/, a
    README): the train shard is the training data, the test shard data.eval_path's, nothing is
    downloaded; records naming no cluster are the dataset's. data.columns maps the shard's fields."""
    import pandas as pd

    repo = hub_cache / "datasets--ct-test--qa-mini"
    snapshot = repo / "snapshots" / "89abcdef0123456789abcdef0123456789abcdef"
    (snapshot / "data").mkdir(parents=True)
    rows = lambda n, tag: pd.DataFrame(  # noqa: E731
        {"question": [f"{tag} question {i}?" for i in range(n)], "answer": [f"{tag} answer {i}" for i in range(n)]}
    )
    rows(24, "train").to_parquet(snapshot / "data" / "train-00000-of-00001.parquet")
    rows(6, "test").to_parquet(snapshot / "data" / "test-00000-of-00001.parquet")
    (snapshot / "README.md").write_text("# qa-mini\n")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)

    out = tmp_path / "run"
    args = ["model=hf", "model.path=ct-test/tiny-llama", "data=jsonl", "data.path=ct-test/qa-mini"]
    args += ["data.eval_path=ct-test/qa-mini", "trainer.log_samples=true", "logger.progress_bar=false"]
    args += ["trainer.max_steps=2", "trainer.global_batch_size=4", "trainer.micro_batch_size=4"]
    args += ["trainer.save_every_steps=0", "trainer.export_final=false"]
    env = {"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}
    columns = "data.columns={prompt: question, response: answer}"
    proc = run_cli(args + [columns, f"trainer.output_dir={out}"], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert "eval/qa-mini/loss" in final  # the dataset's name is the cluster
    ids = [i for x in (out / "samples.rank0.jsonl").read_text().splitlines() for i in json.loads(x)["ids"]]
    assert len(ids) == 8 and all(i.startswith("train-00000-of-00001.parquet:") for i in ids)

    wrong = run_cli(args + ["data.columns={prompt: query}", f"trainer.output_dir={out}2"], env=env)
    assert wrong.returncode == 2
    assert "data.columns.prompt='query' is not one of its fields ['answer', 'question']" in wrong.stderr
    missing = run_cli(args[:2] + ["data=jsonl", "data.path=ct-test/not-cached", f"trainer.output_dir={out}3"], env=env)
    assert missing.returncode == 2
    line = missing.stderr.strip().splitlines()[-1]
    assert "data.path=ct-test/not-cached is neither a local file or directory nor a dataset in the local" in line
