"""LoRA through peft under ZeRO-3: 2 ranks equal 1 rank, resume on another number of ranks, and the
exported adapter / merged model."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import FAST_DATA, run_cli
from tests.helpers import train_rows

pytestmark = pytest.mark.distributed

TARGETS = ["q_proj", "v_proj", "down_proj"]


def relative_error(a, b) -> float:
    return float((a - b).norm() / b.norm())


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A small pretrained-style base: a Llama with random weights and the byte tokenizer, saved as a
    Hugging Face directory (what model.path points at)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ct_train.data import byte_tokenizer

    out = tmp_path_factory.mktemp("base")
    tok = byte_tokenizer()
    torch.manual_seed(3)
    config = AutoConfig.for_model(
        "llama", vocab_size=264, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def lora_args(base, out):
    return FAST_DATA + [
        "model=hf",
        f"model.path={base}",
        "model.lora.enabled=true",
        "model.lora.r=4",
        "model.lora.alpha=8",
        "model.lora.dropout=0",  # dropout masks differ between batch splits
        f"model.lora.target_modules=[{','.join(TARGETS)}]",
        "model.lora.merge_on_export=true",
        "trainer.max_steps=3",
        "trainer.global_batch_size=8",
        "trainer.lr=0.01",  # AdamW: its moments are what DeepSpeed's universal conversion re-slices
        "trainer.warmup_steps=0",
        "trainer.lr_schedule=constant",
        "trainer.grad_clip=0",
        "trainer.eval_every_steps=0",
        "trainer.save_every_steps=2",
        f"trainer.output_dir={out}",
    ]


def test_lora_zero3_two_ranks_equal_one_resume_elsewhere_and_export(tmp_path, base_dir):
    two, one, resumed = tmp_path / "two", tmp_path / "one", tmp_path / "resumed"
    proc = run_cli(lora_args(base_dir, two) + ["trainer.micro_batch_size=2"], launcher="torchrun", nproc=2)
    _ok(proc)
    start = next(line for line in proc.stdout.splitlines() if "parameters" in line)
    assert "trainable (LoRA)" in start, start
    _ok(run_cli(lora_args(base_dir, one) + ["trainer.micro_batch_size=4"]))
    # the 2-rank run's step-2 checkpoint continued on 1 rank (DeepSpeed's universal conversion)
    ckpt = two / "checkpoints" / "step00000002"
    _ok(run_cli(lora_args(base_dir, resumed) + ["trainer.micro_batch_size=4", f"trainer.resume={ckpt}"]))

    a2, a1, ar = (load_file(r / "final" / "adapter_model.safetensors") for r in (two, one, resumed))
    assert a2.keys() == a1.keys() == ar.keys()
    assert {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in a1} == set(TARGETS)  # adapters only, on the targets
    for k in a1:
        # Relative to each tensor's norm: AdamW divides every element by its own gradient's size, so an
        # element whose gradient is ~0 carries the split's float-order noise to its update (measured:
        # elementwise up to 2e-4 on such elements, 1e-6 of the tensor's norm).
        assert relative_error(a2[k], a1[k]) < 1e-5, k
        assert relative_error(ar[k], a1[k]) < 1e-5, k
    assert all(a1[k].abs().max() > 0 for k in a1 if "lora_B" in k)  # B starts at 0: the steps moved it
    assert train_rows(resumed)[3]["loss"] == pytest.approx(train_rows(one)[3]["loss"], rel=1e-5)

    # Checkpoints hold the adapters and their optimizer state, not the frozen base (issue 34: a 135M
    # base was 538 MB of every LoRA checkpoint); a resume on the same number of ranks takes the base
    # from model.path and continues exactly.
    saved = sum(f.stat().st_size for f in (one / "checkpoints" / "step00000002").rglob("*") if f.is_file())
    assert saved < 0.5 * (base_dir / "model.safetensors").stat().st_size, saved
    again = tmp_path / "again"
    ckpt1 = one / "checkpoints" / "step00000002"
    _ok(run_cli(lora_args(base_dir, again) + ["trainer.micro_batch_size=4", f"trainer.resume={ckpt1}"]))
    assert train_rows(again)[3]["loss"] == pytest.approx(train_rows(one)[3]["loss"], rel=1e-6)

    # The base is unchanged: merged/ is exactly the base where no adapter sits, base + (alpha/r) B A where one does.
    cfg = json.loads((one / "final" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(base_dir) and cfg["r"] == 4
    base, merged = load_file(base_dir / "model.safetensors"), load_file(one / "final" / "merged" / "model.safetensors")
    assert merged.keys() == base.keys()
    for k, w in base.items():
        module = k.removesuffix(".weight")
        lora_a = a1.get(f"base_model.model.{module}.lora_A.weight")
        if lora_a is None:
            assert torch.equal(merged[k], w), k
        else:
            delta = (8 / 4) * a1[f"base_model.model.{module}.lora_B.weight"] @ lora_a
            assert delta.abs().max() > 0
            torch.testing.assert_close(merged[k], w + delta, rtol=1e-5, atol=1e-6, msg=k)

    # merged/ generates what base + adapter does
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(one / "final")
    ids = tok("reverse: abc\n", return_tensors="pt").input_ids
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), one / "final").eval()
    plain = AutoModelForCausalLM.from_pretrained(one / "final" / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, adapted(ids).logits, rtol=1e-4, atol=1e-5)
        out_a = adapted.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        out_p = plain.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    assert torch.equal(out_a, out_p)
