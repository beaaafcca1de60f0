"""QLoRA (model.lora.load_in_4bit, issue 34): a 4-bit base through bitsandbytes with LoRA adapters.
CUDA only: on CPU the start refuses in one line, before any data work; the GPU test trains a small
Llama from a local HF directory under ZeRO-2 and checks what a QLoRA run must give."""

import json

import pytest
import torch

from ct_train.config import Config, DeepSpeedConfig, LoraConfig, ModelConfig
from ct_train.errors import ConfigError
from tests.conftest import FAST_DATA, run_cli

QLORA = ["model.lora.enabled=true", "model.lora.load_in_4bit=true", "deepspeed=zero2"]


def _small_llama(path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from ct_train.data import byte_tokenizer

    tok = byte_tokenizer()
    config = AutoConfig.for_model(
        "llama", vocab_size=264, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_qlora_settings_that_cannot_work_are_one_line_each():
    def check(model, zero_stage=2):
        Config(model=model, deepspeed=DeepSpeedConfig(zero_stage=zero_stage)).validate()

    with pytest.raises(ConfigError, match="set model.lora.enabled=true too"):
        check(ModelConfig(path="/m", lora=LoraConfig(load_in_4bit=True)))
    with pytest.raises(ConfigError, match="quantises pretrained weights: set model.path"):
        check(ModelConfig(architecture={"model_type": "llama"}, lora=LoraConfig(enabled=True, load_in_4bit=True)))
    with pytest.raises(ConfigError, match="merge_on_export=true needs the full-precision base"):
        check(ModelConfig(path="/m", lora=LoraConfig(enabled=True, load_in_4bit=True, merge_on_export=True)))
    with pytest.raises(ConfigError, match="load_in_4bit=true needs deepspeed=zero2"):
        check(ModelConfig(path="/m", lora=LoraConfig(enabled=True, load_in_4bit=True)), zero_stage=3)
    check(ModelConfig(path="/m", lora=LoraConfig(enabled=True, load_in_4bit=True)))


@pytest.mark.integration
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusal")
def test_qlora_on_cpu_is_refused_in_one_line_before_the_data(tmp_path):
    model = _small_llama(tmp_path / "base")
    args = FAST_DATA + ["model=hf", f"model.path={model}", *QLORA, f"trainer.output_dir={tmp_path / 'run'}"]
    proc = run_cli(args)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "ct-train: error: model.lora.load_in_4bit=true needs a CUDA GPU (bitsandbytes' 4-bit kernels); on CPU use "
        "model.lora.enabled=true without it"
    )
    assert "tokenise" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_qlora_trains_4bit_base_with_adapters_on_gpu(tmp_path):
    pytest.importorskip("bitsandbytes")
    model = _small_llama(tmp_path / "base")
    out = tmp_path / "run"
    args = FAST_DATA + ["model=hf", f"model.path={model}", *QLORA, "trainer.max_steps=6", "trainer.lr=2e-3"]
    args += ["trainer.global_batch_size=8", "trainer.micro_batch_size=8", "trainer.eval_every_steps=3"]
    proc = run_cli(args + [f"trainer.output_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval/loss"] for r in rows if "eval/loss" in r]
    assert evals[-1] < evals[0]  # the adapters learn on the 4-bit base
    config = json.loads((out / "final" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(model)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model)
    adapted = PeftModel.from_pretrained(base, out / "final")
    assert any("lora_A" in name for name, _ in adapted.named_parameters())
