"""The arithmetic world: every generated answer is what Python computes, the scratchpad's steps are right,
the verifier accepts the reference completion of both formats and rejects wrong or malformed ones."""
import re

import numpy as np
import pytest

from lineage_jax.config import ConfigError
from lineage_jax.reasoning import arith, tools


@pytest.mark.parametrize("kind,sizes", [("add", (1, 2, 5)), ("mul", (1, 3)), ("word", (1, 3, 5))])
def test_every_reference_completion_checks_in_both_formats(kind, sizes):
    for p in arith.problems(kind, 200, sizes, seed=3):
        for scratch in (False, True):
            c = p.completion(scratch)
            assert arith.check(p, c) == {"correct": True, "formatted": True, "answer": p.answer}
            assert arith.reward(p, c) == pytest.approx(1.1)
        assert p.size in sizes and p.answer >= 0


def test_answers_are_computed_not_stored():
    for p in arith.problems("add", 100, (1, 2, 3, 4), seed=0):
        a, b = p.prompt[:-1].split("+")
        assert p.answer == int(a) + int(b)
        assert len(p.steps) == p.size
        # the scratchpad's column digits, read most significant first after the final carry, are the answer
        digits = [s.split("=")[1] for s in p.steps]
        assert int(digits[-1][0] + "".join(d[1] for d in reversed(digits))) == p.answer
    for p in arith.problems("mul", 100, (2, 3), seed=1):
        a, b = p.prompt[:-1].split("*")
        assert p.answer == int(a) * int(b)
    assert arith.addition_steps(57, 68) == ["7+8+0=15", "5+6+1=12"]


def test_word_problems_follow_their_own_text():
    for p in arith.problems("word", 100, (2, 4), seed=2):
        facts = p.prompt.rstrip("?").split(";")
        values = {}
        for f in facts[:-1]:
            words = f.split()
            if len(words) == 3:
                values[words[0]] = int(words[2])
            elif words[3] == "times":
                values[words[0]] = int(words[2]) * values[words[4]]
            else:
                sign = 1 if words[3] == "more" else -1
                values[words[0]] = values[words[5]] + sign * int(words[2])
        assert values[facts[-1]] == p.answer and len(p.steps) == p.size


@pytest.mark.parametrize("completion,correct,formatted", [
    (">125.", True, True), ("7+8+0=15,5+6+1=12,>125.", True, True), (">124.", False, True),
    ("125.", False, False), (">125", False, False), (">125.junk", True, False), ("x,>125.>3.", True, False),
    ("", False, False), (">.", False, False)])
def test_verifier(completion, correct, formatted):
    p = arith.Problem("57+68=", 125, ("7+8+0=15", "5+6+1=12"), "add", 2)
    c = arith.check(p, completion)
    assert (c["correct"], c["formatted"]) == (correct, formatted)


def test_split_holds_out_prompts_and_is_deterministic():
    train, test = arith.split("add", 300, 50, (1, 2), seed=0)
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    assert [p.prompt for p in arith.split("add", 300, 50, (1, 2), seed=0)[0]] == [p.prompt for p in train]
    with pytest.raises(ConfigError, match="kind=div"):
        arith.problems("div", 1, (1,), 0)


def test_encoding_and_the_completion_mask():
    v = arith.VOCAB
    assert v.decode(v.encode("12+3=>15.")) == "12+3=>15."
    tokens, mask = arith.encode_pairs([("1+2=", ">3."), ("12+3=", ">15.")], 10)
    assert tokens.shape == mask.shape == (2, 10)
    # mask[t] = 1 iff the target tokens[t+1] is a completion token
    targets = [v.decode(tokens[i, 1:][mask[i, :-1] == 1]) for i in range(2)]
    assert targets == [">3.", ">15."]
    with pytest.raises(ValueError, match="exceed length"):
        arith.encode_pairs([("1+2=", ">3.")], 5)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        v.encode("1/2")
    toks, lengths = arith.encode_prompts(["1+2=", "33+4="], 8)
    assert lengths.tolist() == [4, 5] and v.decode(toks[1]) == "33+4="


def test_fact_table_and_problems_are_deterministic_and_checked():
    table = arith.fact_table(3, 20)
    assert table == arith.fact_table(3, 20) and table != arith.fact_table(4, 20)
    assert all(len(k) == 3 and k.isalpha() and k not in arith.NAMES for k in table)
    probs = arith.fact_problems(table, 30, [1, 2, 3], seed=0)
    assert probs == arith.fact_problems(table, 30, [1, 2, 3], seed=0)
    assert {p.size for p in probs} == {1, 2, 3}
    for p in probs:
        numeric = re.sub(r"[a-z]+", lambda m: str(table[m.group()]), p.prompt.rstrip("="))
        assert p.answer == tools.calculate(numeric)             # the answer, checked by a separate evaluator
        assert arith.check(p, p.completion(True))["formatted"] and len(p.steps) == p.size + (p.size > 1)
    with pytest.raises(ConfigError, match="n=0"):
        arith.fact_table(0, 0)
    with pytest.raises(ConfigError, match="terms=3"):
        arith.fact_problem(np.random.default_rng(0), {"zor": 1, "kip": 2}, 3)
