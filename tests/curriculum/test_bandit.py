"""Exp3.S and the reward scaler against hand-computed values."""

import math

import numpy as np
import pytest

from ct_train.curriculum.bandit import Exp3S, QuantileRewardScaler


def _exp3s_by_hand(w, eta, eps, beta, t, arm, reward):
    """Graves et al. 2017's Exp3.S update written out with plain floats (one draw of `arm`)."""
    n = len(w)
    z = sum(math.exp(x) for x in w)
    pi = [(1 - eps) * math.exp(x) / z + eps / n for x in w]
    r_tilde = [((reward if i == arm else 0.0) + beta) / pi[i] for i in range(n)]
    v = [w[i] + eta * r_tilde[i] for i in range(n)]
    alpha = 1.0 / t
    new = [
        math.log((1 - alpha) * math.exp(v[i]) + alpha / (n - 1) * sum(math.exp(v[j]) for j in range(n) if j != i))
        for i in range(n)
    ]
    return [x - max(new) for x in new], pi


def test_first_update_matches_the_worked_example():
    # N=3, w=0: pi = 1/3 each; arm 0 rewarded 1 -> r~ = (3, 0, 0); eta=0.5 -> v = (1.5, 0, 0).
    # t=1, alpha=1: w_0 = log((e^0 + e^0)/2) = 0, w_1 = w_2 = log((e^1.5 + e^0)/2) = 1.0082661
    # (alpha_1 = 1 shares everything: the first reward lifts the *other* arms), shifted to max 0.
    bandit = Exp3S(3, eta=0.5, eps=0.1)
    np.testing.assert_allclose(bandit.probs(), [1 / 3] * 3)
    bandit.update(np.array([1.0, 0, 0]), np.array([1, 0, 0]), bandit.probs())
    np.testing.assert_allclose(bandit.w, [-1.0082661, 0.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_a_sequence_of_updates_matches_the_formula_written_by_hand(beta):
    bandit = Exp3S(4, eta=0.3, eps=0.05, beta=beta)
    w = [0.0] * 4
    for t, (arm, reward) in enumerate([(2, 1.0), (2, 0.5), (0, -1.0), (3, 0.2), (2, 1.0)], start=1):
        expected_w, expected_pi = _exp3s_by_hand(w, 0.3, 0.05, beta, t, arm, reward)
        np.testing.assert_allclose(bandit.probs(), expected_pi, rtol=1e-12)
        draws = np.eye(4)[arm]
        bandit.update(np.full(4, reward), draws, bandit.probs())
        np.testing.assert_allclose(bandit.w, expected_w, rtol=1e-10, atol=1e-12)
        w = expected_w
    assert bandit.t == 5 and bandit.probs().argmax() == 2


def test_several_draws_per_step_credit_each_arm_by_its_share():
    # Two draws of a step, one each on arms 0 and 1: each reward is weighted 1/2 (n_i / m), so one
    # step with both equals the by-hand formula with r~_i = r_i * 1/2 / pi_i.
    bandit = Exp3S(3, eta=0.4, eps=0.0)
    pi = bandit.probs()
    bandit.update(np.array([1.0, -1.0, 0.7]), np.array([1, 1, 0]), pi)
    v = np.array([0.4 * 0.5 / pi[0], -0.4 * 0.5 / pi[1], 0.0])  # arm 2 not drawn: its 0.7 is ignored
    e = np.exp(v)
    w = np.log([(e[1] + e[2]) / 2, (e[0] + e[2]) / 2, (e[0] + e[1]) / 2])  # t = 1: alpha = 1
    np.testing.assert_allclose(bandit.w, w - w.max(), atol=1e-12)


def test_probabilities_keep_the_exploration_floor_and_state_round_trips():
    bandit = Exp3S(5, eta=2.0, eps=0.1)
    for _ in range(50):
        bandit.update(np.array([1.0, 0, 0, 0, 0]), np.array([1, 0, 0, 0, 0]), bandit.probs())
    p = bandit.probs()
    assert p.sum() == pytest.approx(1.0) and p.min() >= 0.1 / 5 - 1e-12 and p[0] > 0.85
    again = Exp3S(5, eta=2.0, eps=0.1)
    again.load_state_dict(bandit.state_dict())
    np.testing.assert_array_equal(again.probs(), p)
    with pytest.raises(ValueError, match="5 arms"):
        Exp3S(4, eta=2.0, eps=0.1).load_state_dict(bandit.state_dict())


def test_reward_scaler_maps_the_percentiles_to_minus_one_and_one():
    scaler = QuantileRewardScaler(history=100)
    scaler.add(range(11))  # 0..10: 20th percentile 2, 80th percentile 8
    assert scaler.scale(5.0) == pytest.approx(0.0)
    assert scaler.scale(6.5) == pytest.approx(0.5)
    assert scaler.scale(2.0) == pytest.approx(-1.0) and scaler.scale(-40.0) == -1.0
    assert scaler.scale(9.0) == 1.0 and scaler.scale(1e9) == 1.0
    assert scaler.scale(float("nan")) == 0.0


def test_reward_scaler_history_is_a_bounded_window():
    scaler = QuantileRewardScaler(history=10)
    scaler.add([100.0] * 10)
    scaler.add(np.linspace(0, 1, 10))  # the old, large gains fall out of the window
    assert len(scaler.history) == 10 and max(scaler.history) == 1.0
    assert scaler.scale(0.5) == pytest.approx(2 * (0.5 - 0.2) / (0.8 - 0.2) - 1, abs=1e-9)
    restored = QuantileRewardScaler(history=10)
    restored.load_state_dict(scaler.state_dict())
    assert restored.scale(0.5) == scaler.scale(0.5)


def test_a_constant_fixed_share_forgets_an_arm_that_stopped_paying():
    """alpha=None (1/t): an arm that paid for 30 updates keeps over half its probability through 30
    silent ones; with a constant alpha = 0.1 it keeps under a quarter, near uniform (1/8); the first
    update is the same either way."""
    settled, forgetful = Exp3S(8, 0.3, 0.05), Exp3S(8, 0.3, 0.05, alpha=0.1)
    paid = np.eye(8)[0]
    for b in (settled, forgetful):
        b.update_full(paid)
    assert np.allclose(settled.probs(), forgetful.probs())
    for _ in range(29):
        for b in (settled, forgetful):
            b.update_full(paid)
    leads = settled.probs()[0], forgetful.probs()[0]
    for _ in range(30):
        for b in (settled, forgetful):
            b.update_full(np.zeros(8))
    assert settled.probs()[0] > 0.5 * leads[0]
    assert forgetful.probs()[0] < 0.25 * leads[1] and forgetful.probs()[0] < 0.15
