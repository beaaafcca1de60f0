"""The interaction pass's parts without training: probe mixes, the count sketch, agreement, the
level split of clusters, and the config checks."""

import dataclasses

import numpy as np
import pytest
import torch

from ct_train.config import Config, DataConfig, InteractionConfig, SkillsConfig, TrainerConfig
from ct_train.data import load_tokenizer, prepare_data
from ct_train.data.prepare import split_by_level
from ct_train.errors import ConfigError, DataError
from ct_train.interaction import agreement
from ct_train.interaction.gradient import CountSketch, select_parameters, similarity
from ct_train.interaction.probe import extra_samples, mixes


def test_probe_batches_are_the_base_batch_plus_extra_samples_of_one_category():
    runs = mixes(["a", "b", "c"], np.array([100, 300, 0 + 100]), None, batch=32, extra_samples=16)
    assert list(runs) == ["base", "a", "b", "c"]
    assert runs["base"] == pytest.approx({"a": 6.4, "b": 19.2, "c": 6.4})  # IID: by size, sums to 32
    assert runs["b"] == pytest.approx({"a": 6.4, "b": 35.2, "c": 6.4})
    weighted = mixes(["a", "b"], np.array([10, 10]), {"a": 3, "b": 1}, batch=8, extra_samples=8)
    assert weighted["base"] == pytest.approx({"a": 6.0, "b": 2.0})


def test_extra_samples_round_to_whole_micro_batches_per_rank():
    cfg = Config(
        trainer=TrainerConfig(global_batch_size=32, micro_batch_size=8), interaction=InteractionConfig(extra=0.5)
    )
    assert extra_samples(cfg, world_size=1) == 16
    assert extra_samples(cfg, world_size=2) == 16
    small = dataclasses.replace(cfg, interaction=InteractionConfig(extra=0.1))
    with pytest.raises(ConfigError, match="ranks x trainer.micro_batch_size = 16; raise interaction.extra"):
        extra_samples(small, world_size=2)


def test_count_sketch_keeps_inner_products():
    rng = np.random.default_rng(0)
    base = rng.standard_normal(200_000)
    vecs = [base + 0.5 * rng.standard_normal(200_000), base + 0.5 * rng.standard_normal(200_000)]
    vecs.append(rng.standard_normal(200_000))
    sketch = CountSketch(4096, seed=1)
    out = torch.zeros(3, 4096, dtype=torch.float64)
    for i, v in enumerate(vecs):
        half = len(v) // 2  # two "parameters": the same map for every vector, a different one per parameter
        sketch.add(out[i], torch.from_numpy(v[:half]), 0)
        sketch.add(out[i], torch.from_numpy(v[half:]), 1)
    exact = similarity(np.stack(vecs), "cosine")
    approx = similarity(out.numpy(), "cosine")
    assert exact[0, 1] == pytest.approx(0.8, abs=0.01)
    np.testing.assert_allclose(approx, exact, atol=0.05)


def test_parameter_patterns_select_by_hugging_face_name_or_fail_naming_the_key():
    named = [("lm.model.layers.0.mlp.up_proj.weight", torch.nn.Parameter(torch.zeros(2)))]
    named.append(("lm.lm_head.weight", torch.nn.Parameter(torch.zeros(2))))
    assert [n for n, _ in select_parameters(named, ["model.layers.*"])] == ["model.layers.0.mlp.up_proj.weight"]
    with pytest.raises(ConfigError, match=r"interaction.params=\['nothing\*'\] matches no trainable parameter"):
        select_parameters(named, ["nothing*"])


def test_agreement_is_the_rank_correlation_of_the_off_diagonal_entries():
    a = np.array([[-1.0, 0.1, 0.2], [0.3, -1.0, 0.4], [0.5, 0.6, -1.0]])
    assert agreement(a, 2 * a + 1)["spearman_offdiag"] == pytest.approx(1.0)
    flipped = -a + np.diag([-2.0, -2.0, -2.0])  # same diagonal sign, reversed off-diagonal order
    r = agreement(a, flipped)
    assert r["spearman_offdiag"] == pytest.approx(-1.0) and r["n_offdiag"] == 6


def test_split_by_difficulty_makes_one_cluster_per_level():
    tok = load_tokenizer(None, None)
    skills = SkillsConfig(clusters=["add", "copy"], levels=2, train_per_level=5, eval_per_level=2)
    data = prepare_data(DataConfig(name="skills", template="simple", skills=skills, split_by_difficulty=True), tok)
    assert data.clusters == ["add/L1", "add/L2", "copy/L1", "copy/L2"]
    assert np.bincount(data.train.cluster_ids).tolist() == [5, 5, 5, 5]
    assert np.bincount(data.eval.cluster_ids).tolist() == [2, 2, 2, 2]


def test_split_by_difficulty_refuses_a_continuous_difficulty():
    import datasets

    ds = datasets.Dataset.from_dict({"cluster": ["qa"] * 30 + ["x"], "difficulty": [i / 7 for i in range(30)] + [None]})
    with pytest.raises(DataError, match="cluster 'qa' has 30 distinct difficulty values"):
        split_by_level(ds)
    assert split_by_level(ds.select(range(25, 31)))["cluster"][-2:] == ["qa/L4.14286", "x"]  # 29 / 7 by its :g name


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="shapley"), "interaction.method='shapley' is not valid"),
        (dict(extra=0.0), "interaction.extra=0.0 must be > 0"),
        (dict(params=[]), "interaction.params=\\[\\] must list parameter-name patterns"),
        (dict(base_weights={"a": -1}), "interaction.base_weights.a=-1 must be a number >= 0"),
    ],
)
def test_interaction_config_errors_name_the_key(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        InteractionConfig(**kwargs).validate()
