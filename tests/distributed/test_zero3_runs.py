"""Real multi-process runs: 2 gloo ranks, DeepSpeed ZeRO-3, through the deepspeed launcher and torchrun."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import FAST, FAST_DATA, run_cli
from tests.helpers import last_eval, metrics, samples, train_rows

pytestmark = pytest.mark.distributed


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def test_gradient_is_the_same_for_two_batch_splits(tmp_path):
    """One SGD step on the same global batch of 8: 2 ranks x 2 x 2 accumulation (torchrun) vs
    1 rank x 1 x 8 accumulation (plain python): identical updated weights and gradient norm. The 2-rank
    run finishes the fused loss's gradients in forward (model.loss_grad_mode=forward, under ZeRO-3 and
    DeepSpeed's division by the accumulation steps), the 1-rank run recomputes them in backward."""
    common = FAST + [
        "trainer.max_steps=1",
        "trainer.global_batch_size=8",
        "trainer.optimizer=sgd",
        "trainer.lr=0.5",
        "trainer.warmup_steps=0",
        "trainer.lr_schedule=constant",
        "trainer.grad_clip=0",
        "trainer.eval_every_steps=0",
        "trainer.save_every_steps=0",
    ]
    two = run_cli(
        common
        + ["trainer.micro_batch_size=2", "model.loss_grad_mode=forward", f"trainer.output_dir={tmp_path / 'two'}"],
        launcher="torchrun",
        nproc=2,
    )
    _ok(two)
    one = run_cli(common + ["trainer.micro_batch_size=1", f"trainer.output_dir={tmp_path / 'one'}"])
    _ok(one)
    g2, g1 = train_rows(tmp_path / "two")[1]["grad_norm"], train_rows(tmp_path / "one")[1]["grad_norm"]
    assert g1 > 0 and g2 == pytest.approx(g1, rel=1e-5)
    w2, w1 = load_file(tmp_path / "two/final/model.safetensors"), load_file(tmp_path / "one/final/model.safetensors")
    assert w2.keys() == w1.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-6, msg=k)
    # The step really moved the weights (lr 0.5 x gradient), so equality above is not trivial.
    assert train_rows(tmp_path / "one")[1]["loss"] > 0


# The curriculum engine end to end: IT2ACL with the prediction-gain signal (an extra no-grad forward
# under ZeRO-3 on every rank) and the phase-2 band bandit, two clusters per step.
RESUME = FAST + [
    "curriculum=it2acl",
    "curriculum.signal=pg",
    "curriculum.phase2=bandit",
    "curriculum.clusters_per_batch=2",
    "trainer.max_steps=12",
    "trainer.global_batch_size=8",
    "trainer.micro_batch_size=2",
    "trainer.save_every_steps=4",
    "trainer.eval_every_steps=0",
    "trainer.log_samples=true",
    "trainer.warmup_steps=2",
]


def test_two_rank_it2acl_run_agrees_across_ranks_keeps_its_checkpoints_and_exports(tmp_path):
    """(Killing such a run and resuming it exactly is tests/distributed/test_multinode.py, with the same
    curriculum over two simulated nodes.)"""
    ref = tmp_path / "ref"
    shm = set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*"))
    _ok(run_cli(RESUME + [f"trainer.output_dir={ref}"], launcher="deepspeed", nproc=2))
    # DeepSpeed's CPU all-reduce buffers (66 MB of RAM per rank in /dev/shm) are removed at the end
    assert set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*")) <= shm
    for rank in (0, 1):
        assert [r["step"] for r in samples(ref, rank)] == list(range(1, 13))
    _check_ranks_agree(ref)

    # Nothing already written is lost: resume=never on a directory with checkpoints refuses to start.
    refused = run_cli(RESUME + [f"trainer.output_dir={ref}", "trainer.resume=never"])
    assert refused.returncode == 2 and "already holds checkpoints" in refused.stderr
    assert (ref / "checkpoints/step00000012/trainer_state.json").exists()

    _check_hf_export_reproduces_eval_loss(ref)


def _check_ranks_agree(run: Path):
    """Both ranks logged the same curriculum decision each step and trained disjoint samples."""
    r0, r1 = samples(run, 0), samples(run, 1)
    assert [r["plan"] for r in r0] == [r["plan"] for r in r1]
    assert len({tuple(sorted(r["plan"])) for r in r0}) > 1  # the bandit did move between pools
    for a, b in zip(r0, r1):
        assert len(a["ids"]) == len(b["ids"]) == 4 and not set(a["ids"]) & set(b["ids"])
        pools = {name.split("@")[0] for name in a["plan"]}
        assert {i.split("-L")[0] for i in a["ids"] + b["ids"]} <= pools  # trained what was planned
    rows = train_rows(run)
    probs = [sum(v for k, v in rows[s].items() if k.startswith("curriculum/prob/")) for s in rows]
    assert probs == pytest.approx([1.0] * len(rows))
    assert any(k.startswith("curriculum/gain/") for k in rows[12])


# make test-slow (marker `extended`): make test keeps a 2-rank checkpoint resumed on 1 rank in
# tests/distributed/test_lora.py (the universal conversion; the continued run equals an uninterrupted one)
@pytest.mark.extended
def test_resume_on_one_rank_continues_the_two_rank_global_stream(tmp_path):
    """A 2-rank run's step-4 checkpoint resumed by 1 rank (same global batch, 4 accumulation steps):
    the global sample stream and the curriculum's decisions continue exactly as on 2 ranks."""
    ref = tmp_path / "ref"
    _ok(run_cli(RESUME + ["trainer.max_steps=8", f"trainer.output_dir={ref}"], launcher="torchrun", nproc=2))
    one = tmp_path / "one"
    proc = run_cli(
        RESUME
        + ["trainer.max_steps=8", f"trainer.output_dir={one}", f"trainer.resume={ref / 'checkpoints/step00000004'}"]
    )
    _ok(proc)
    two_ranks = {r["step"]: (r["plan"], r["ids"]) for r in samples(ref, 0)}
    for r in samples(ref, 1):
        two_ranks[r["step"]] = (r["plan"], sorted(two_ranks[r["step"]][1] + r["ids"]))
    one_rank = {r["step"]: (r["plan"], sorted(r["ids"])) for r in samples(one, 0)}
    assert sorted(one_rank) == [5, 6, 7, 8]
    for step in one_rank:
        assert one_rank[step] == two_ranks[step], step
    a, b = train_rows(ref), train_rows(one)
    for step in (5, 6, 7, 8):
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-4), step


def _check_hf_export_reproduces_eval_loss(run: Path):
    """final/ loads with plain transformers (no DeepSpeed) and gives the run's final held-out loss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ct_train.compose import load_config
    from ct_train.data import collate, prepare_data
    from ct_train.modeling import SampleLossModel

    cfg = load_config(run / "config.yaml")
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    model = SampleLossModel(AutoModelForCausalLM.from_pretrained(run / "final")).eval()
    data = prepare_data(cfg.data, tokenizer)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data.eval), 8):
            batch = collate(data.eval, list(range(start, min(start + 8, len(data.eval)))), tokenizer.pad_token_id)
            loss, _ = model(batch.input_ids, batch.attention_mask, batch.labels)
            has = batch.n_target > 0
            total += float(loss[has].sum())
            count += int(has.sum())
    assert total / count == pytest.approx(last_eval(run)["eval/loss"], rel=1e-4)
    assert metrics(run)[0]["step"] == 0  # the before-training eval is logged too


def _hf_init(init: Path, tie: bool):
    """A small Llama at random init saved as a Hugging Face directory, with the byte tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ct_train.data import byte_tokenizer

    tok = byte_tokenizer()
    arch = dict(
        vocab_size=264,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tie,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **arch)).save_pretrained(init)
    tok.save_pretrained(init)
    return init, tok


def test_one_rank_zero3_adamw_steps_equal_pytorch_adamw(tmp_path):
    """The one-rank fast path (fused AdamW, no reduce-scatter, each block gathered in one call)
    computes what plain PyTorch does: two AdamW steps (weight decay on the matrices only) on the
    same batches, against transformers' own loss and torch's unfused AdamW, give the same weights."""
    from transformers import AutoModelForCausalLM

    from ct_train.compose import load_config
    from ct_train.data import collate, prepare_data

    init, tok = _hf_init(tmp_path / "init", tie=False)
    out = tmp_path / "run"
    lr, decay = 1e-3, 0.1
    proc = run_cli(
        FAST_DATA
        + ["model=hf", f"model.path={init}", "trainer.max_steps=2", "trainer.global_batch_size=8",
           "trainer.micro_batch_size=2", f"trainer.lr={lr}", f"trainer.weight_decay={decay}",
           "trainer.warmup_steps=0", "trainer.lr_schedule=constant", "trainer.grad_clip=0",
           "trainer.log_samples=true", "trainer.eval_every_steps=0", f"trainer.output_dir={out}"]
    )  # fmt: skip
    _ok(proc)
    assert "ZeRO-3 (gathered per block: 2 x LlamaDecoderLayer)" in proc.stdout

    cfg = load_config(out / "config.yaml")
    data = prepare_data(cfg.data, tok)
    position = {sample_id: i for i, sample_id in enumerate(data.train.dataset["id"])}
    model = AutoModelForCausalLM.from_pretrained(init)
    start = {k: p.detach().clone() for k, p in model.named_parameters()}
    params = dict(model.named_parameters())
    no_decay = [k for k, p in params.items() if p.ndim < 2 or "norm" in k.lower()]
    groups = [
        {"params": [p for k, p in params.items() if k not in no_decay], "weight_decay": decay},
        {"params": [params[k] for k in no_decay], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.trainer.adam_betas), eps=cfg.trainer.adam_eps, foreach=False)
    for step in samples(out, 0):
        batch = collate(data.train, [position[i] for i in step["ids"]], tok.pad_token_id)
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss.backward()
        opt.step()
        opt.zero_grad()
    trained = dict(AutoModelForCausalLM.from_pretrained(out / "final").named_parameters())
    assert trained.keys() == params.keys()
    for k, p in params.items():
        # Adam divides each element by its own gradient's size: elements whose gradient is ~0 move
        # by a noisy fraction of lr, so the tolerance is a tenth of one step's size.
        torch.testing.assert_close(trained[k], p.detach(), rtol=0, atol=lr / 10, msg=k)
    moved = max((trained[k] - start[k]).abs().max().item() for k in start)
    assert moved > lr  # two steps of ~lr each: the equality is not the starting weights'


def test_fused_zero3_step_equals_unfused_pytorch_step_with_tied_embeddings(tmp_path):
    """2 ranks, ZeRO-3, fused per-sample loss (torch backend) vs plain transformers with its own
    unfused loss on the same global batch: one SGD step gives the same weights. The model ties its
    input and output embeddings, so the fused loss must see ZeRO-3's gathered embedding weight."""
    from transformers import AutoModelForCausalLM

    from ct_train.compose import load_config
    from ct_train.data import collate, prepare_data

    init, tok = _hf_init(tmp_path / "init", tie=True)
    out = tmp_path / "run"
    proc = run_cli(
        FAST_DATA
        + [
            "model=hf",
            f"model.path={init}",
            "model.loss_backend=torch",
            "trainer.max_steps=1",
            "trainer.global_batch_size=8",
            "trainer.micro_batch_size=2",
            "trainer.optimizer=sgd",
            "trainer.lr=0.5",
            "trainer.warmup_steps=0",
            "trainer.lr_schedule=constant",
            "trainer.grad_clip=0",
            "trainer.log_samples=true",
            "trainer.eval_every_steps=0",
            f"trainer.output_dir={out}",
        ],
        launcher="torchrun",
        nproc=2,
    )
    _ok(proc)

    # The same step in plain PyTorch: transformers' own (unfused) mean token loss over the global batch.
    cfg = load_config(out / "config.yaml")
    data = prepare_data(cfg.data, tok)
    position = {sample_id: i for i, sample_id in enumerate(data.train.dataset["id"])}
    ids = samples(out, 0)[0]["ids"] + samples(out, 1)[0]["ids"]
    batch = collate(data.train, [position[i] for i in ids], tok.pad_token_id)
    model = AutoModelForCausalLM.from_pretrained(init)
    model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss.backward()
    with torch.no_grad():
        expected = {k: p - 0.5 * p.grad for k, p in model.named_parameters()}
    final = AutoModelForCausalLM.from_pretrained(out / "final")
    assert final.lm_head.weight.data_ptr() == final.model.embed_tokens.weight.data_ptr()  # still tied
    trained = dict(final.named_parameters())
    assert trained.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(trained[k], expected[k], rtol=1e-4, atol=1e-6, msg=k)
    moved = (trained["model.embed_tokens.weight"] - model.model.embed_tokens.weight).abs().max()
    assert moved > 1e-3  # the step changed the (tied) embedding, so the equality is not trivial
