"""model.liger_kernel (issue 33): Liger-Kernel's RMSNorm, RoPE and SwiGLU in the decoder. CUDA only: on
CPU the start refuses in one line before any data work; on a GPU the per-sample losses and gradients
equal those without it."""

import pytest
import torch

from ct_train.config import ModelConfig
from ct_train.errors import ConfigError
from ct_train.modeling import check_gpu_options

TINY = {"model_type": "llama", "vocab_size": 264, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusal")
def test_liger_on_cpu_is_refused_in_one_line():
    check_gpu_options(ModelConfig(architecture=TINY))  # off: nothing to check
    with pytest.raises(ConfigError, match=r"^model.liger_kernel=true needs a CUDA GPU .*on CPU leave it false$"):
        check_gpu_options(ModelConfig(architecture=TINY, liger_kernel=True))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_liger_gives_the_same_per_sample_losses_and_gradients_on_gpu():
    pytest.importorskip("liger_kernel")
    from ct_train.data import byte_tokenizer
    from ct_train.losses import objective
    from ct_train.modeling import SampleLossModel, build_hf_model

    torch.backends.cuda.matmul.allow_tf32 = False
    tok = byte_tokenizer()
    ids = torch.randint(4, 264, (4, 48), generator=torch.Generator().manual_seed(0)).cuda()
    labels = ids.clone()
    labels[:, :16] = -100
    mask = torch.ones_like(ids)
    weights = torch.linspace(0.5, 2.0, 4, device="cuda")
    results = []
    for liger in (False, True):
        torch.manual_seed(0)
        cfg = ModelConfig(architecture=TINY, attn_implementation="sdpa", liger_kernel=liger)
        model = SampleLossModel(build_hf_model(cfg, tok, torch.float32)).cuda()
        loss, _ = model(ids, mask, labels, weights)
        objective(loss, weights).backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-4, atol=1e-4)
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, rtol=1e-3, atol=1e-4, msg=name)


def test_liger_patches_the_norms_the_mlps_and_rope_of_the_model_built():
    """On CPU the kernels cannot run, but the patching can be checked: every RMSNorm and MLP of the
    model ct_train builds is Liger's, and Llama's rotary embedding is Liger's."""
    pytest.importorskip("liger_kernel")
    import transformers.models.llama.modeling_llama as llama

    from ct_train.data import byte_tokenizer
    from ct_train.modeling import build_hf_model

    # Liger patches transformers' Llama module too (its RMSNorm and MLP classes, its rope function):
    # put every name back, so later tests build plain Llamas.
    saved = dict(vars(llama))
    try:
        model = build_hf_model(ModelConfig(architecture=TINY, liger_kernel=True), byte_tokenizer(), torch.float32)
        norms = [m for n, m in model.named_modules() if n.endswith("norm") or n.endswith("layernorm")]
        assert len(norms) == 2 * 2 + 1  # two per layer and the final one
        assert all(type(m).forward is not m.forward.__func__ for m in norms)  # patched on the instance
        assert {m.forward.__func__.__qualname__ for m in norms} == {"LigerRMSNorm.forward"}
        assert {layer.mlp.forward.__func__.__qualname__ for layer in model.model.layers} == {"LigerSwiGLUMLP.forward"}
        assert llama.apply_rotary_pos_emb.__name__ == "liger_rotary_pos_emb"
    finally:
        for name, value in saved.items():
            if vars(llama).get(name) is not value:
                setattr(llama, name, value)
