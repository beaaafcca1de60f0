"""`ct-train-score` end to end: the distributed loss pass on 2 ranks with an uneven share per rank
equals the single-process scores, every record scored once; a re-run reads the cache."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import FAST, cli_env, free_port

pytestmark = pytest.mark.integration

N_RECORDS = 61  # odd: rank 0 scores 31, rank 1 30, and rank 1 runs one dummy forward at micro-batch 4


def _score(args, nproc=1, cwd=None):
    bindir = Path(sys.executable).parent
    if nproc == 1:
        cmd = [str(bindir / "ct-train-score")]
    else:
        cmd = [
            str(bindir / "deepspeed"),
            "--num_gpus",
            str(nproc),
            "--master_port",
            str(free_port()),
            "--module",
            "ct_train",
            "mode=score",
        ]
    proc = subprocess.run(cmd + args, capture_output=True, text=True, timeout=600, cwd=cwd, env=cli_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


# make test-slow (marker `extended`): the no-grad distributed pass is also make test's eval on 2 ranks
@pytest.mark.extended
def test_distributed_loss_scores_equal_one_process_and_are_cached(tmp_path, shared_data):
    lines = (shared_data / "alpaca52k-gpt4-scored-stage3.jsonl").read_text().splitlines()[:N_RECORDS]
    data = tmp_path / "alpaca.jsonl"
    data.write_text("\n".join(lines) + "\n")
    args = FAST[-3:] + [
        "logger.progress_bar=false",
        "data=jsonl",
        f"data.path={data}",
        "data.max_seq_len=256",
        "scoring=loss",
        "trainer.micro_batch_size=4",
        f"scoring.cache_dir={tmp_path / 'cache'}",
    ]
    two = _score(args + [f"scoring.output={tmp_path / 'two.jsonl'}"], nproc=2, cwd=tmp_path)
    one = _score(args + [f"scoring.output={tmp_path / 'one.parquet'}", f"scoring.cache_dir={tmp_path / 'c1'}"])
    a = pd.read_json(tmp_path / "two.jsonl", lines=True, dtype={"id": str})
    b = pd.read_parquet(tmp_path / "one.parquet")
    assert len(a) == len(b) == N_RECORDS and list(a["id"]) == list(b["id"])
    assert list(a["id"]) == [json.loads(line)["id"] for line in lines]  # the input's order
    assert np.allclose(a["difficulty"], b["difficulty"], rtol=1e-5) and a["difficulty"].std() > 0
    assert set(a["difficulty_scorer"]) == {"loss"} and a["difficulty_model"].nunique() == 1
    meta = json.loads((tmp_path / "two.jsonl.meta.json").read_text())
    assert (meta["records"], meta["scored"], meta["world_size"], meta["cached"]) == (N_RECORDS, N_RECORDS, 2, False)
    assert (tmp_path / "two.hist.png").stat().st_size > 1000
    assert "computed on 2 rank(s)" in two.stdout and "computed on 1 rank(s)" in one.stdout

    again = _score(args + [f"scoring.output={tmp_path / 'again.jsonl'}"])  # same model and data: the cache
    assert "read from the cache" in again.stdout
    assert np.array_equal(pd.read_json(tmp_path / "again.jsonl", lines=True)["difficulty"], a["difficulty"])
