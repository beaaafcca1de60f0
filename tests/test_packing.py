"""Packed micro-batches (data.packing) give the per-sample losses and gradients of padded ones, and
no sample attends to another; length grouping keeps a rank's samples and micro-batch sizes."""

import numpy as np
import pytest
import torch

from ct_train.data import collate, group_by_length
from ct_train.data.batching import pack_rows
from ct_train.data.prepare import TokenizedSplit
from ct_train.losses import objective
from ct_train.modeling import SampleLossModel, flatten_packed

VOCAB = 264


def tiny_lm(attn: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "llama", vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
    )  # fmt: skip
    return SampleLossModel(AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn))


def split_of(lengths, seed=0) -> TokenizedSplit:
    """Samples of these lengths: random ids, a prompt of a third of the tokens (labels -100)."""
    import datasets

    rng = np.random.default_rng(seed)
    ids, labels, n_target = [], [], []
    for n in lengths:
        x = rng.integers(4, VOCAB, n).tolist()
        lab = [-100] * (n // 3) + x[n // 3 :]
        ids.append(x)
        labels.append(lab)
        n_target.append(sum(v != -100 for v in lab[1:]))
    ds = datasets.Dataset.from_dict(
        {"input_ids": ids, "labels": labels, "n_target": n_target, "id": [f"s{i}" for i in range(len(lengths))]}
    )
    n = len(lengths)
    return TokenizedSplit(ds, np.arange(n) % 3, np.full(n, np.nan), np.asarray(lengths), np.asarray(n_target))


def losses_and_grads(model, batch, weights):
    model.zero_grad()
    kwargs = {}
    if batch.sample_index is not None:
        kwargs = dict(position_ids=batch.position_ids, sample_index=batch.sample_index, num_samples=batch.num_samples)
    loss, correct = model(batch.input_ids, batch.attention_mask, batch.labels, weights, **kwargs)
    objective(loss, weights).backward()
    return loss.detach(), correct, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_first_fit_decreasing_fills_rows_within_capacity():
    lengths = [50, 90, 10, 60, 40, 100, 30]
    rows = pack_rows(lengths, 100)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 100 for r in rows)
    assert len(rows) == 4  # 380 tokens: 100 | 90+10 | 60+40 | 50+30
    assert pack_rows([120, 30], 100) == [[0], [1]]  # longer than a row: a row of its own


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("grad_mode", ["recompute", "forward"])
def test_packed_losses_and_gradients_equal_padded(attn, grad_mode):
    lengths = [37, 12, 64, 5, 50, 23, 41, 9]
    split = split_of(lengths)
    model = tiny_lm(attn)
    model.loss_grad_mode = grad_mode
    indices = [3, 0, 7, 2, 5, 1, 6, 4]  # not in storage order: per-sample outputs follow `indices`
    padded = collate(split, indices, pad_id=0)
    packed = collate(split, indices, pad_id=0, pack=True)
    assert packed.input_ids.shape[0] < padded.input_ids.shape[0]  # it did pack
    assert packed.ids == padded.ids and torch.equal(packed.n_target, padded.n_target)
    weights = torch.linspace(0.5, 2.0, len(indices))
    loss_a, correct_a, grads_a = losses_and_grads(model, padded, weights)
    loss_b, correct_b, grads_b = losses_and_grads(model, packed, weights)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-5)
    assert torch.equal(correct_a, correct_b)
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, rtol=1e-5, atol=1e-5, msg=name)


def test_one_row_layout_for_flash_attention_keeps_the_losses():
    """flash_attention_2 gets the packed rows as one row without padding (flatten_packed); checked here
    through sdpa with the block mask on that row (flash-attn itself needs a GPU)."""
    split = split_of([37, 12, 64, 5, 50, 23])
    model = tiny_lm("sdpa").eval()
    batch = collate(split, range(6), pad_id=0, pack=True)
    assert batch.input_ids.shape[0] > 1 and (batch.sample_index < 0).any()  # several rows, some padding
    flat = flatten_packed(batch.input_ids, batch.position_ids, batch.labels, batch.sample_index)
    assert flat[0].shape == (1, sum([37, 12, 64, 5, 50, 23]))
    with torch.no_grad():
        rows = model(batch.input_ids, batch.attention_mask, batch.labels, None, batch.position_ids,
                     batch.sample_index, 6)[0]  # fmt: skip
        one = model(flat[0], None, flat[2], None, flat[1], flat[3], 6)[0]
    torch.testing.assert_close(one, rows, rtol=1e-5, atol=1e-5)


def test_no_attention_across_samples():
    """A sample's loss is the same whatever its row-mates are, and wherever it sits in its row."""
    split = split_of([60, 20, 20, 20, 20, 20, 20], seed=1)
    model = tiny_lm("sdpa").eval()

    def run(indices):
        batch = collate(split, indices, pad_id=0, pack=True)
        assert [int((batch.sample_index[r] >= 0).sum()) for r in range(2)] == [60, 60]  # rows: 60 | 3 x 20
        with torch.no_grad():
            return model(batch.input_ids, batch.attention_mask, batch.labels, None, batch.position_ids,
                         batch.sample_index, batch.num_samples)[0]  # fmt: skip

    la, lb, lc = run([0, 1, 2, 3]), run([0, 1, 5, 6]), run([0, 5, 1, 6])
    torch.testing.assert_close(lb[1], la[1], rtol=1e-6, atol=1e-6)  # sample 1 leads, other mates
    # Without the block mask a later sample of a row would attend to the earlier ones.
    torch.testing.assert_close(lc[2], la[1], rtol=1e-5, atol=1e-5)  # sample 1 after sample 5
    torch.testing.assert_close(lc[1], lb[2], rtol=1e-5, atol=1e-5)  # sample 5 first vs after sample 1
    assert not torch.allclose(la[1], la[2])  # (different samples do differ)


def test_group_by_length_keeps_the_samples_and_sizes():
    lengths = np.array([5, 90, 7, 80, 60, 3, 70, 6])
    micro = [np.array([0, 1]), np.array([2, 3]), np.array([4, 5]), np.array([6, 7])]
    grouped = group_by_length(micro, lengths)
    assert [len(m) for m in grouped] == [2, 2, 2, 2]
    assert sorted(np.concatenate(grouped).tolist()) == list(range(8))
    assert [sorted(lengths[m].tolist()) for m in grouped] == [[80, 90], [60, 70], [6, 7], [3, 5]]
    padded = sum(len(m) * lengths[m].max() for m in micro)
    assert sum(len(m) * lengths[m].max() for m in grouped) < padded


def _packed(lengths, indices, seed=0):
    return collate(split_of(lengths, seed), indices, pad_id=0, pack=True)


def test_the_document_block_mask_allows_the_dense_masks_pairs_and_skips_the_blocks_between_samples():
    """flex_attention's mask (modeling.document_block_mask) holds the same (query, key) pairs as the
    sdpa path's dense block-diagonal mask, and a query block sees no key block of an earlier sample."""
    from ct_train.modeling import document_block_mask

    batch = _packed([256, 128, 128, 100, 60, 30], range(6))  # rows as long as the longest sample
    sample_index = batch.sample_index
    rows, t = sample_index.shape
    mask = document_block_mask(sample_index)
    b, q, kv = torch.arange(rows)[:, None, None], torch.arange(t)[None, :, None], torch.arange(t)[None, None, :]
    pairs = mask.mask_mod(b, torch.zeros_like(b), q, kv)
    dense = tiny_lm("sdpa").packed_attention(sample_index)[:, 0]
    assert torch.equal(pairs, dense)
    # The row holding the two 128-token samples: its second query block (the second sample) reads one
    # key block (its own), not the first sample's: the kernel skips what the dense mask only zeroes.
    row = next(r for r in range(rows) if sample_index[r, 0] != sample_index[r, 255])
    assert sample_index[row, 127] != sample_index[row, 128]  # (the samples meet at the block edge)
    seen = mask.kv_num_blocks[row, 0, 1] + (
        mask.full_kv_num_blocks[row, 0, 1] if mask.full_kv_num_blocks is not None else 0
    )
    assert int(seen) == 1


def test_flex_attention_forward_gives_the_dense_masks_per_sample_losses_on_cpu():
    """FlexAttention's CPU path runs forward only (no backward on CPU in torch 2.13): the packed rows'
    per-sample losses through it equal those of sdpa with the dense mask. (Gradients: the GPU test.)"""
    batch = _packed([37, 12, 64, 5, 50, 23, 41, 9], [3, 0, 7, 2, 5, 1, 6, 4])
    args = (batch.input_ids, batch.attention_mask, batch.labels, None, batch.position_ids, batch.sample_index,
            batch.num_samples)  # fmt: skip
    with torch.no_grad():
        dense, _ = tiny_lm("sdpa").eval()(*args)
        flex, _ = tiny_lm("flex_attention").eval()(*args)
    torch.testing.assert_close(flex, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flex_attention_losses_and_gradients_equal_the_dense_mask_on_gpu():
    torch.backends.cuda.matmul.allow_tf32 = False
    batch = _packed([37, 12, 64, 5, 50, 23, 41, 9, 300, 200], list(range(10)))
    for name in ("input_ids", "attention_mask", "labels", "position_ids", "sample_index"):
        value = getattr(batch, name)
        setattr(batch, name, value.cuda() if value is not None else None)
    weights = torch.linspace(0.5, 2.0, 10, device="cuda")
    loss_a, correct_a, grads_a = losses_and_grads(tiny_lm("sdpa").cuda(), batch, weights)
    loss_b, correct_b, grads_b = losses_and_grads(tiny_lm("flex_attention").cuda(), batch, weights)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-4, atol=1e-4)
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, rtol=1e-3, atol=1e-4, msg=name)


def test_auto_attention_is_sdpa_on_cpu_and_flex_attention_is_refused_there():
    from ct_train.errors import ConfigError
    from ct_train.modeling import resolve_attn

    if torch.cuda.is_available():
        pytest.skip("a CPU-only check")
    assert resolve_attn("auto") == "sdpa"
    with pytest.raises(ConfigError, match="flex_attention needs a GPU .*use sdpa"):
        resolve_attn("flex_attention")
