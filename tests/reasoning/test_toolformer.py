"""Toolformer's filter: the weights are the paper's (1, .8, .6, .4, .2, then 0, normalised), L⁻ takes the
better of no call and a call without result, and a call is kept exactly when L⁻ − L⁺ ≥ τ_f."""
import numpy as np
import pytest

from lineage_jax.reasoning import toolformer


def test_weights_are_the_papers():
    np.testing.assert_allclose(toolformer.weights(7), np.array([1, .8, .6, .4, .2, 0, 0]) / 3.0)
    np.testing.assert_allclose(toolformer.weights(2), np.array([1, .8]) / 1.8)
    with pytest.raises(ValueError, match="n=0"):
        toolformer.weights(0)


def test_keep_compares_the_best_baseline_to_the_call_with_its_result():
    plus = np.array([[0.1, 0.1, 0.1], [2.0, 2.0, 2.0], [1.0, 1.0, 1.0]])
    none = np.array([[3.0, 3.0, 3.0], [2.0, 2.0, 2.0], [1.5, 1.5, 1.5]])
    call_only = np.array([[5.0, 5.0, 5.0], [1.0, 1.0, 1.0], [1.2, 1.2, 1.2]])
    kept, gain = toolformer.keep(plus, none, call_only, tau=0.5)
    np.testing.assert_allclose(gain, [2.9, -1.0, 0.2])
    assert kept.tolist() == [True, False, False]
    assert toolformer.keep(plus, none, call_only, tau=0.1)[0].tolist() == [True, False, True]
    # the weighting: a gain only on a late token counts less than the same gain on the first
    early = toolformer.weighted_loss(np.array([0.0, 1.0, 1.0, 1.0]))
    late = toolformer.weighted_loss(np.array([1.0, 1.0, 1.0, 0.0]))
    assert early < late


def _copying_lm(texts):
    """A scripted LM: a character costs 0.1 nats where it occurs in an earlier observation ``=…;``, else 3."""
    out = []
    for t in texts:
        losses = []
        for j in range(1, len(t)):
            seen = "".join(o for o in __import__("re").findall(r"=(\d*);", t[:j]))
            losses.append(0.1 if t[j] in seen else 3.0)
        out.append(np.array(losses))
    return out


def test_gains_score_each_candidate_from_the_three_texts_and_augment_keeps_the_best():
    corpus = [("12*3=", ">36."), ("2+2=", ">4.")]
    cands = [toolformer.Candidate(0, 0, "12*3", "36", "right"), toolformer.Candidate(0, 0, "12+3", "15", "wrong"),
             toolformer.Candidate(0, 2, "12*3", "36", "right"), toolformer.Candidate(1, 0, "2+2", "4", "right")]
    trace, start = toolformer.insert(*corpus[0], cands[0])
    assert trace["text"] == "12*3=[calc(12*3)]=36;>36." and trace["text"][start:] == ">36."
    assert trace["text"][slice(*trace["spans"][0])] == "=36;"
    bare, start = toolformer.insert(*corpus[0], cands[2], with_result=False)
    assert bare["text"] == "12*3=>3[calc(12*3)]=;6." and bare["text"][start:] == "6."
    g = toolformer.gains(_copying_lm, corpus, cands)
    # ">36.": weights (1, .8, .6, .4)/2.8; the result makes both digits 2.9 nats cheaper
    np.testing.assert_allclose(g, [2.9 * 1.4 / 2.8, 0.0, 2.9 * 1.0 / 1.8, 2.9 * 0.8 / 2.4])
    traces, lens = toolformer.augment(corpus, cands, g, tau=0.5)
    assert [t["text"] for t in traces] == ["12*3=>3[calc(12*3)]=36;6.", "2+2=[calc(2+2)]=4;>4."] and lens == [5, 4]
    traces, _ = toolformer.augment(corpus, cands, g, tau=1.0)
    assert [t["text"] for t in traces] == ["12*3=>3[calc(12*3)]=36;6.", "2+2=>4."] and traces[1]["spans"] == []
