"""The toy task: the gold preference orders responses as documented, the labeller is Bradley–Terry,
and the TFDS dataset serves what the generator makes."""
import random

import numpy as np
import pytest

from lineage_jax.align import dataset, task
from lineage_jax.tokenize import get_tokenizer


def test_gold_orders_correct_then_brief_then_polite():
    p = "rev abcd="
    assert task.answer(p) == "dcba" and task.answer("sort dca=") == "acd" and task.answer("dup ab=") == "abab"
    g = lambda r: task.gold_score(p, r)   # noqa: E731
    assert g("dcba") > g("ok dcba") > g("ok, dcba duh") > g("dcab") >= g("dcb a b c d e f g h i j k")
    assert g("dcba duh") == pytest.approx(2 - 0.4 - 0.5) and g("ok dcba") == pytest.approx(2 - 0.3)
    assert not task.is_correct(p, "dcba dcba") and task.is_correct(p, "sure, dcba ugh")
    rng = random.Random(0)
    for _ in range(200):   # every correct response of any kind beats every wrong one
        q = task.make_prompt(rng)
        right = [task.gold_score(q, task.response_of_kind(rng, q, k)) for k in ("correct", "verbose", "rude")]
        assert min(right) > task.gold_score(q, task.response_of_kind(rng, q, "wrong"))


def test_bad_prompt_is_one_clear_line():
    with pytest.raises(ValueError, match="expected '<op> <word>='"):
        task.answer("flip abc=")
    with pytest.raises(ValueError, match="temperature"):
        task.bt_probability(1.0, 0.0, 0.0)


def test_labeller_follows_bradley_terry():
    p, a, b = "sort cab=", "abc", "ok abc"   # gold 2.0 vs 1.7: P(a > b) = σ(0.3 / 0.5)
    rng = random.Random(1)
    wins = np.mean([task.noisy_label(rng, p, a, b, 0.5) for _ in range(4000)])
    expected = task.bt_probability(task.gold_score(p, a), task.gold_score(p, b), 0.5)
    assert expected == pytest.approx(1 / (1 + np.exp(-0.6)))
    assert abs(wins - expected) < 3 * np.sqrt(expected * (1 - expected) / 4000)


def test_examples_are_seeded_and_noisy():
    rows = list(task.examples(3, 400))
    assert rows == list(task.examples(3, 400)) and rows != list(task.examples(4, 400))
    agree = np.mean([task.gold_score(r["prompt"], r["chosen"]) >= task.gold_score(r["prompt"], r["rejected"])
                     for r in rows])
    assert 0.6 < agree < 0.98                   # mostly right, sometimes flipped by the labeller
    demos = [task.is_correct(r["prompt"], r["demonstration"]) for r in rows]
    assert 0.7 < np.mean(demos) < 0.97          # the crowd's demonstrations are mostly, not all, correct


def test_tfds_dataset_serves_the_generator(tmp_path, monkeypatch):
    monkeypatch.setitem(dataset.SPLITS, "train", (0, 40))
    monkeypatch.setitem(dataset.SPLITS, "test", (1, 10))
    rows = dataset.load(tmp_path, "train")
    assert rows == list(task.examples(0, 40)) and len(dataset.load(tmp_path, "test")) == 10
    tok = get_tokenizer("byte")
    enc = dataset.encode(tok, [r["prompt"] for r in rows], [r["chosen"] for r in rows], 32)
    for i, r in enumerate(rows[:5]):
        t, m = enc["tokens"][i], enc["mask"][i]
        assert tok.decode(t[m == 0][: enc["prompt_lengths"][i]]) == r["prompt"]
        assert list(t[m == 1]) == tok.encode(r["chosen"]) + [tok.eos_id]
        assert dataset.decode_response(tok, t, enc["prompt_lengths"][i], tok.eos_id) == r["chosen"]
    with pytest.raises(ValueError, match="sequence length"):
        dataset.encode(tok, ["rev abc="], ["x" * 40], 32)
