"""Induction-head measurements read the model's own attention patterns and weights: a hand-built induction
circuit scores ~1 on prefix matching and copying, a fresh (or no-repeat) model scores low, and the data's
masks mark exactly the copyable targets."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.reasoning import induction, tiny


def test_repeated_spans_masks_mark_the_copyable_targets():
    rng = np.random.default_rng(0)
    tokens, late, early = induction.repeated_spans(rng, 64, 32, 50)
    assert tokens.min() >= 1 and tokens.max() < 50
    for b in range(64):
        e, l = np.flatnonzero(early[b]), np.flatnonzero(late[b])
        assert len(e) == len(l) >= 3
        # each late target equals the early target at the same offset; the inputs before them too
        np.testing.assert_array_equal(tokens[b, l + 1], tokens[b, e + 1])
        np.testing.assert_array_equal(tokens[b, l], tokens[b, e])
    gaps = {int(np.flatnonzero(late[b])[0] - np.flatnonzero(early[b])[0]) for b in range(64)}
    assert len(gaps) > 5                                  # no single relative offset copies
    ctl, late2, early2 = induction.repeated_spans(np.random.default_rng(0), 64, 32, 50, repeats=False)
    np.testing.assert_array_equal(late2, late)            # the same masks, with nothing to copy
    equal = np.mean([(ctl[b, np.flatnonzero(late2[b]) + 1] == ctl[b, np.flatnonzero(early2[b]) + 1]).mean()
                     for b in range(64)])
    assert equal < 0.1
    with pytest.raises(ValueError, match="spans"):
        induction.repeated_spans(rng, 1, 8, 10, min_span=5, max_span=5)


def test_icl_losses_of_a_perfect_copier_and_a_uniform_model():
    rng = np.random.default_rng(1)
    tokens, late, early = induction.repeated_spans(rng, 8, 32, 20)
    uniform = jnp.zeros((8, 32, 20))
    out = induction.icl_losses(uniform, jnp.asarray(tokens), late, early)
    np.testing.assert_allclose([float(out["late_loss"]), float(out["early_loss"])], np.log(20), rtol=1e-6)
    # a model that puts all mass on the true next token in the second occurrence
    oracle = np.zeros((8, 32, 20), np.float32)
    b, t = np.nonzero(late)
    oracle[b, t, tokens[b, t + 1]] = 50.0
    out = induction.icl_losses(jnp.asarray(oracle), jnp.asarray(tokens), late, early)
    assert float(out["late_loss"]) < 1e-6 and float(out["icl_score"]) == pytest.approx(np.log(20), rel=1e-4)


def _handmade_induction(V=12, T=16):
    """A 2-layer attention-only model wired as an induction circuit (one head per layer, head width = D):
    layer 0 attends to the previous position and writes that token into the subspace [V, 2V); layer 1
    matches the current token against that subspace and adds the attended token to the logits."""
    cfg = tiny.TinyConfig(vocab=V, context=T, d=2 * V + T, heads=1, layers=2, mlp=False, norm=False)
    model, params = tiny.init(cfg, jax.random.key(0))
    D, big, tok, pos = cfg.d, 30.0, np.arange(V), np.arange(T)
    z = lambda *shape: np.zeros(shape)
    p = {"wte": z(V, D), "wpe": z(T, D), "unembed": z(D, V), "layer_0": {}, "layer_1": {}}
    p["wte"][tok, tok] = 1.0                                # token one-hot in [0, V)
    p["wpe"][pos, 2 * V + pos] = 1.0                        # position one-hot in [2V, 2V+T)
    p["unembed"][tok, tok] = 1.0
    l0, l1 = p["layer_0"], p["layer_1"]
    l0["wq"], l0["wk"], l0["wv"], l0["wo"] = z(D, 1, D), z(D, 1, D), z(D, 1, D), z(1, D, D)
    l0["wq"][2 * V + pos, 0, pos] = big                    # query of position t: e_t
    l0["wk"][2 * V + pos[:-1], 0, pos[1:]] = big           # key of position s: e_(s+1)  -> t attends to t-1
    l0["wv"][tok, 0, tok] = 1.0
    l0["wo"][0, tok, V + tok] = 1.0                        # the previous token, written to [V, 2V)
    l1["wq"], l1["wk"], l1["wv"], l1["wo"] = z(D, 1, D), z(D, 1, D), z(D, 1, D), z(1, D, D)
    l1["wq"][tok, 0, tok] = big                            # my token …
    l1["wk"][V + tok, 0, tok] = big                        # … against each position's previous token
    l1["wv"][tok, 0, tok] = 1.0
    l1["wo"][0, tok, tok] = 3.0                            # copy the attended token (outweighs the residual)
    assert jax.tree.structure(p) == jax.tree.structure(jax.tree.map(np.asarray, params))
    return model, jax.tree.map(jnp.asarray, p), V, T


def test_a_handmade_induction_circuit_scores_high_and_a_fresh_model_low():
    model, p, V, T = _handmade_induction()
    rng = np.random.default_rng(0)
    x = rng.permutation(np.arange(1, V))[: T // 2][None]
    tokens = jnp.asarray(np.concatenate([x, x], 1))
    assert float(induction.previous_token(model, p, tokens)[0, 0]) > 0.9
    assert float(induction.prefix_matching(model, p, tokens)[1, 0]) > 0.9
    assert induction.copying(p, 1)[0] > 0.99
    logits = model.apply({"params": p}, tokens)
    # from the second repeated token on (position 0 has no previous token, so it also "matches" the first)
    np.testing.assert_array_equal(np.asarray(logits.argmax(-1))[0, T // 2 + 1:T - 1], np.asarray(tokens)[0, T // 2 + 2:])
    fresh_model, fresh = tiny.init(tiny.TinyConfig(vocab=V, context=T, d=32, heads=2, layers=2, mlp=False, norm=False),
                                   jax.random.key(1))
    assert induction.prefix_matching(fresh_model, fresh, tokens)[1].max() < 0.3


def test_lookup_prompts_hold_a_consistent_map():
    rng = np.random.default_rng(2)
    prompts, answers, seen = induction.lookup_prompts(rng, 200, 8, 30)
    assert prompts.shape == (200, 17)
    for row, ans, s in zip(prompts, answers, seen):
        pairs = dict()
        for k, l in zip(row[0:16:2], row[1:16:2]):
            assert pairs.setdefault(int(k), int(l)) == int(l)
        assert s == (int(row[-1]) in pairs) and (not s or pairs[int(row[-1])] == ans)
    assert 0.85 < seen.mean() < 0.99                       # 1 − (3/4)^8 ≈ 0.90
