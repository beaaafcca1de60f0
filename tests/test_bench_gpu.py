"""`make bench-gpu`'s script, run as `--smoke` on CPU so it does not rot between GPU reservations."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_bench_gpu_smoke_runs_every_cpu_variant_on_identical_samples(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--smoke", "--out", str(tmp_path), "--port", "29791"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    table = (tmp_path / "bench_gpu.md").read_text()
    assert "| ours | " in table and "| eager | " in table  # the kernel table
    rows = {}
    for line in table.splitlines():
        m = re.match(
            r"\| (ct_train [^|]+|plain PyTorch reference|TRL [^|]+) \| ([\d,]+) \|"
            r" [^|]+ \| [^|]+ \| [^|]+ \| ([\d.]+) \|",
            line,
        )
        if m:
            rows[m.group(1).strip()] = (float(m.group(2).replace(",", "")), float(m.group(3)))
    names = {"ct_train ZeRO-3 packed", "ct_train ZeRO-3 padded", "ct_train ZeRO-2 packed", "plain PyTorch reference"}
    assert names <= set(rows) and any(n.startswith("TRL") for n in rows), table
    assert all(tokens_per_s > 0 for tokens_per_s, _ in rows.values())
    # The same samples, weights and loss: padded and packed rows give one first loss; the reference and
    # TRL build the model from one seed and see ct_train's first batch, so theirs agree too.
    assert rows["ct_train ZeRO-3 packed"][1] == pytest.approx(rows["ct_train ZeRO-3 padded"][1], abs=1e-4)
    trl = next(v for n, v in rows.items() if n.startswith("TRL"))
    assert trl[1] == pytest.approx(rows["plain PyTorch reference"][1], abs=2e-3)


def test_bench_gpu_refuses_to_time_a_missing_gpu(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert proc.returncode != 0 and "none is visible here" in proc.stderr
