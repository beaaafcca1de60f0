"""The chunked per-sample loss against PyTorch's cross-entropy, values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from ct_train.losses import objective, objective_weights, per_sample_loss


def _reference(hidden, weight, labels):
    logits = (hidden @ weight.t())[:, :-1]
    target = labels[:, 1:]
    tok = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="none"
    ).view_as(target)
    valid = (target != -100).float()
    return (tok * valid).sum(1) / valid.sum(1).clamp(min=1)


def _case(seed=0, b=4, t=12, h=16, v=37, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, h, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(v, h, generator=g, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[:, :5] = -100  # prompt
    labels[1, 9:] = -100  # padding
    labels[2, :] = -100  # no response token at all
    return hidden, weight, labels


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_values_and_gradients_match_pytorch_for_any_upstream(chunk):
    hidden, weight, labels = _case()
    upstream = torch.tensor([0.3, -1.7, 2.0, 0.9], dtype=torch.float64)
    ours, _ = per_sample_loss(hidden, weight, labels, chunk_tokens=chunk)
    (ours * upstream).sum().backward()
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    ref = _reference(hidden, weight, labels)
    (ref * upstream).sum().backward()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(gh, hidden.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gw, weight.grad, rtol=1e-5, atol=1e-7)


def test_sample_without_response_is_zero_not_nan():
    hidden, weight, labels = _case()
    loss, n_correct = per_sample_loss(hidden, weight, labels)
    assert loss[2].item() == 0.0 and n_correct[2].item() == 0.0
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(hidden.grad).all() and hidden.grad[2].abs().sum() == 0


def test_prompt_rows_get_no_gradient():
    hidden, weight, labels = _case()
    per_sample_loss(hidden, weight, labels)[0].sum().backward()
    assert hidden.grad[:, :4].abs().sum() == 0  # positions predicting prompt tokens 1..4
    assert hidden.grad[0, 4:-1].abs().sum() > 0


def test_correct_counts_mean_greedy_exact_match():
    hidden, weight, labels = _case(v=11)
    logits = (hidden @ weight.t())[:, :-1]
    labels[0, 1:] = torch.where(labels[0, 1:] != -100, logits[0].argmax(-1), labels[0, 1:])  # sample 0: all argmax
    _, n_correct = per_sample_loss(hidden, weight, labels)
    n_target = (labels[:, 1:] != -100).sum(1)
    assert n_correct[0] == n_target[0]
    assert n_correct[1] <= n_target[1]


def test_objective_gradient_is_split_invariant():
    # The same global batch as 1 x 4 micro-batches (one rank) or 2 ranks x 2: after DeepSpeed's
    # averaging (/world) and accumulation scaling (/gas) the summed gradient must be identical.
    hidden, weight, labels = _case(b=8, seed=3)
    n_target = (labels[:, 1:] != -100).sum(1)
    for norm in ("token", "sample"):
        denom = float(n_target.sum()) if norm == "token" else float((n_target > 0).sum())
        grads = []
        for world, gas, mbs in ((1, 4, 2), (2, 2, 2), (2, 1, 4), (1, 1, 8)):
            weight.grad = None
            for rank in range(world):
                for m in range(gas):
                    lo = rank * gas * mbs + m * mbs
                    sl = slice(lo, lo + mbs)
                    loss, _ = per_sample_loss(hidden[sl], weight, labels[sl])
                    obj = objective(loss, objective_weights(n_target[sl], norm, denom, grad_scale=world * gas))
                    (obj / (world * gas)).backward()  # what DeepSpeed does: /gas per micro-step, mean over ranks
            grads.append(weight.grad.clone())
        for g in grads[1:]:
            torch.testing.assert_close(g, grads[0])
        # and it is the gradient of the plain global objective
        weight.grad = None
        loss, _ = per_sample_loss(hidden, weight, labels)
        full = (loss * n_target).sum() / denom if norm == "token" else loss.sum() / denom
        full.backward()
        torch.testing.assert_close(grads[0], weight.grad)


def test_sample_weights_make_the_objective_a_weighted_mean_split_two_ways():
    """Per-cluster loss weights (TAPIR): sum w_i n_i l_i / sum w_i n_i, the same over 2 micro-batches."""
    hidden, weight, labels = _case(b=8, seed=5)
    n_target = (labels[:, 1:] != -100).sum(1)
    w = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.0, 0.0, 2.0])
    denom = float((w * n_target).sum())
    weight.grad = None
    for sl in (slice(0, 4), slice(4, 8)):
        loss, _ = per_sample_loss(hidden[sl], weight, labels[sl])
        (
            objective(loss, objective_weights(n_target[sl], "token", denom, grad_scale=2, sample_weights=w[sl])) / 2
        ).backward()
    split = weight.grad.clone()
    weight.grad = None
    loss, _ = per_sample_loss(hidden, weight, labels)
    ((w * n_target * loss).sum() / denom).backward()
    torch.testing.assert_close(split, weight.grad)
    unweighted = weight.grad.clone()
    weight.grad = None
    per_sample_loss(hidden, weight, labels)[0].sum().backward()
    assert not torch.allclose(unweighted, weight.grad)  # the weights matter
