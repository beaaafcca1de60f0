"""Prompt-swapped twins of the probe (data.prompt_swap): each response after another prompt of its cluster."""

import json

import numpy as np

from ct_train.config import DataConfig
from ct_train.data import byte_tokenizer, prepare_data
from ct_train.data.prompt_swap import swap_pairs, with_twins


def test_swap_pairs_is_a_derangement_inside_each_cluster():
    cluster_ids = np.array([0, 1, 0, 0, 2, 1])
    partner = swap_pairs(cluster_ids)
    assert partner.tolist() == [2, 5, 3, 0, -1, 1]  # cluster 2 has one sample: no twin
    has = partner >= 0
    assert (partner[has] != np.flatnonzero(has)).all()
    assert (cluster_ids[partner[has]] == cluster_ids[has]).all()
    assert sorted(partner[has].tolist()) == np.flatnonzero(has).tolist()  # each prompt used once


def test_a_twin_is_its_partners_prompt_then_its_own_response(tmp_path):
    recs = [
        {"id": f"r{i}", "prompt": f"question {i}" + "?" * i, "response": f"ans{i}", "cluster": f"c{i % 2}"}
        for i in range(40)
    ]
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = DataConfig(name="jsonl", path=str(path), eval_fraction=0.1, cluster_field="cluster", template="bare")
    tok = byte_tokenizer()
    probe = prepare_data(cfg, tok, probe_per_cluster=4).probe
    combined, kept = with_twins(probe)
    partner = swap_pairs(probe.cluster_ids)
    n = len(probe)
    assert len(kept) == n == 8 and len(combined) == 2 * n and (partner >= 0).all()
    assert combined.dataset[:n]["input_ids"] == probe.dataset[:]["input_ids"]  # the probe first, unchanged
    assert (combined.cluster_ids[n:] == probe.cluster_ids[kept]).all()
    assert combined.lengths.max() <= probe.lengths.max()
    assert combined.lengths[n:].tolist() == [len(x) for x in combined.dataset[n:]["input_ids"]]
    for k, i in enumerate(kept):
        own, other, twin = probe.dataset[int(i)], probe.dataset[int(partner[i])], combined.dataset[n + k]
        start = next(p for p, label in enumerate(own["labels"]) if label != -100)
        cut = next(p for p, label in enumerate(other["labels"]) if label != -100)
        # the partner's prompt (different from its own), then its own labelled response, labels intact
        assert twin["input_ids"][:cut] == other["input_ids"][:cut] != own["input_ids"][:start]
        assert twin["input_ids"][cut:] == own["input_ids"][start:][: len(twin["input_ids"]) - cut]
        assert twin["labels"][cut:] == own["labels"][start:][: len(twin["labels"]) - cut]
        assert set(twin["labels"][:cut]) == {-100}
        assert twin["n_target"] == combined.n_target[n + k] == sum(1 for x in twin["labels"][1:] if x != -100) > 0
        assert tok.decode([t for t in twin["labels"] if t != -100]).startswith(own["id"].replace("r", "ans"))


def test_prompt_information_is_the_mean_twin_minus_own_loss_per_cluster(monkeypatch):
    """The arithmetic of evaluation.prompt_information, with the two scoring passes given: pairs
    without a response token on either side are left out; the standard error is the pairs' sd / sqrt(n)."""
    from ct_train import evaluation
    from ct_train.data import TokenizedSplit

    def split(cluster_ids, n_target):
        n = len(cluster_ids)
        return TokenizedSplit(None, np.array(cluster_ids), np.full(n, np.nan), np.full(n, 4), np.array(n_target))

    # a probe of 6 (cluster 2's lone sample has no twin), then the twins of samples 0-4
    combined = split([0, 0, 0, 1, 1, 2, 0, 0, 0, 1, 1], [1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1])
    kept = np.array([0, 1, 2, 3, 4])
    losses = np.array([1.0, 2.0, 3.0, 0.5, 9.0, 4.0, 1.5, 2.0, 4.0, 0.5, 0.0])
    monkeypatch.setattr(evaluation, "sample_losses", lambda *a, **k: losses)
    loss, info, se = evaluation.prompt_information(None, combined, 6, kept, 4, 8, 0)
    np.testing.assert_allclose(loss[:3], [2.0, 0.5, 4.0])
    assert np.isnan(loss[3])  # no probe sample
    np.testing.assert_allclose(info[:2], [0.5, 0.0])  # cluster 1: the pair with no own target is left out
    assert np.isnan(info[2]) and np.isnan(info[3]) and np.isnan(se[1])  # one pair: no standard error
    np.testing.assert_allclose(se[0], np.std([0.5, 0.0, 1.0], ddof=1) / np.sqrt(3))
