"""Each alignment objective equals a PyTorch re-derivation from its paper (written here, loop by loop where
the paper is a recursion) on the same random inputs; token log-probabilities equal trl's
``selective_log_softmax`` (trl 1.16 keeps DPO's loss inside its trainer and has no PPO trainer, so the
rest are compared with the re-derivations; see docs/lineage.md, Alignment)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.align import objectives as O

torch = pytest.importorskip("torch")
F = torch.nn.functional
B, T, V = 6, 9, 11


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros((B, T), np.float32)
    for b in range(B):
        s = rng.integers(0, 3)
        mask[b, s:s + rng.integers(2, T - s + 1)] = 1
    f = lambda *s: rng.normal(size=s).astype(np.float32)   # noqa: E731
    return rng, mask, f


def _close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), b.detach().numpy() if hasattr(b, "detach") else b, rtol=tol, atol=tol)


def test_token_logprobs_equal_trl_selective_log_softmax():
    trl_utils = pytest.importorskip("trl.trainer.utils")
    rng, mask, f = _inputs()
    logits, targets = f(B, T, V), rng.integers(0, V, (B, T))
    ours = O.token_logprobs(jnp.asarray(logits), jnp.asarray(targets))
    _close(ours, trl_utils.selective_log_softmax(torch.tensor(logits), torch.tensor(targets)))
    seq = O.sequence_logprob(ours, jnp.asarray(mask))
    _close(seq, (F.log_softmax(torch.tensor(logits), -1).gather(-1, torch.tensor(targets)[..., None])[..., 0]
                 * torch.tensor(mask)).sum(-1))
    assert float(O.sft_loss(ours, jnp.asarray(mask))) == pytest.approx(
        -float((np.asarray(ours) * mask).sum() / mask.sum()), rel=1e-6)


def test_bradley_terry_loss_and_accuracy():
    _, _, f = _inputs(1)
    rc, rr = f(B), f(B)
    loss, acc = O.bradley_terry_loss(jnp.asarray(rc), jnp.asarray(rr))
    _close(loss, -F.logsigmoid(torch.tensor(rc) - torch.tensor(rr)).mean())
    assert float(acc) == pytest.approx(np.mean(rc > rr))


@pytest.mark.parametrize("kind,eps", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0)])
def test_dpo_loss_equals_the_paper(kind, eps):
    _, _, f = _inputs(2)
    pc, pr, rc, rr = (f(B) * 3 for _ in range(4))
    beta = 0.3
    losses, cr, rj = O.dpo_loss(*map(jnp.asarray, (pc, pr, rc, rr)), beta=beta, kind=kind, label_smoothing=eps)
    tc = lambda x: torch.tensor(x, dtype=torch.float64)   # noqa: E731
    h = (tc(pc) - tc(rc)) - (tc(pr) - tc(rr))
    if kind == "sigmoid":   # Rafailov et al. eq. 7; cDPO mixes in the flipped label with weight ε
        ref = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    else:                   # Azar et al. eq. 17
        ref = (h - 1 / (2 * beta)) ** 2
    _close(losses, ref)
    _close(cr, beta * (tc(pc) - tc(rc)))
    _close(rj, beta * (tc(pr) - tc(rr)))
    # the gradient w.r.t. the policy's log-probs: β σ(−βh)·(−1, +1) for the plain sigmoid loss
    if kind == "sigmoid" and eps == 0:
        g = jax.grad(lambda a: O.dpo_loss(a, jnp.asarray(pr), jnp.asarray(rc), jnp.asarray(rr), beta=beta)[0].sum())(
            jnp.asarray(pc))
        _close(g, -beta * torch.sigmoid(-beta * h))


def test_dpo_settings_are_checked():
    for bad, msg in [(dict(beta=0.0, kind="sigmoid"), "align.beta=0.0: must be > 0"),
                     (dict(beta=-1, kind="sigmoid"), "must be > 0"),
                     (dict(beta=0.1, kind="hinge"), "allowed sigmoid, ipo"),
                     (dict(beta=0.1, kind="sigmoid", label_smoothing=0.5), r"\[0, 0.5\)")]:
        with pytest.raises(ValueError, match=msg):
            O.check_dpo(**bad)


def _torch_gae(rewards, values, mask, gamma, lam):
    """Schulman et al. 2016 eq. 16, a Python loop over each row's response positions."""
    adv = np.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        idx = np.nonzero(mask[b])[0]
        last = 0.0
        for j in reversed(range(len(idx))):
            t = idx[j]
            nv = values[b, idx[j + 1]] if j + 1 < len(idx) else 0.0
            delta = rewards[b, t] + gamma * nv - values[b, t]
            last = delta + gamma * lam * last
            adv[b, t] = last
    return adv, (adv + values) * mask


def test_kl_shaping_gae_whitening_match_the_recursions():
    rng, mask, f = _inputs(3)
    mask = np.zeros((B, T), np.float32)   # contiguous responses after a prompt, like rollouts
    for b in range(B):
        mask[b, 2:2 + rng.integers(2, T - 1)] = 1
    logp, ref, score, values = f(B, T), f(B, T), f(B), f(B, T)
    rewards, kl = O.kl_shaped_rewards(*map(jnp.asarray, (score, logp, ref, mask)), kl_coef=0.2)
    want = -0.2 * (logp - ref) * mask
    for b in range(B):
        want[b, np.nonzero(mask[b])[0][-1]] += score[b]
    _close(rewards, want)
    _close(kl, (logp - ref) * mask)
    adv, ret = O.gae(rewards, jnp.asarray(values), jnp.asarray(mask), 0.99, 0.95)
    a_ref, r_ref = _torch_gae(np.asarray(rewards), values * mask, mask, 0.99, 0.95)
    _close(adv, a_ref, 1e-4)
    _close(ret, r_ref, 1e-4)
    w = np.asarray(O.whiten(adv, jnp.asarray(mask)))
    sel = torch.tensor(np.asarray(adv)[mask > 0])
    _close(w[mask > 0], (sel - sel.mean()) / torch.sqrt(sel.var() + 1e-8), 1e-4)   # torch var: unbiased


def test_ppo_clipped_objectives():
    rng, mask, f = _inputs(4)
    logp, old, adv, v, old_v, ret = f(B, T) * 0.3, f(B, T) * 0.3, f(B, T), f(B, T), f(B, T), f(B, T)
    loss, clipfrac, _ = O.ppo_policy_loss(*map(jnp.asarray, (logp, old, adv, mask)), clip=0.2)
    t = lambda x: torch.tensor(x, dtype=torch.float64)   # noqa: E731
    ratio = torch.exp(t(logp) - t(old))
    per = torch.max(-t(adv) * ratio, -t(adv) * torch.clamp(ratio, 0.8, 1.2))
    m = t(mask)
    _close(loss, (per * m).sum() / m.sum())
    _close(clipfrac, (((ratio - 1).abs() > 0.2).double() * m).sum() / m.sum())
    vl = O.value_loss(*map(jnp.asarray, (v, old_v, ret, mask)), clip=0.2)
    vc = t(old_v) + torch.clamp(t(v) - t(old_v), -0.2, 0.2)
    _close(vl, 0.5 * (torch.max((t(v) - t(ret)) ** 2, (vc - t(ret)) ** 2) * m).sum() / m.sum())
    # where the ratio is clipped against the advantage's sign, no gradient flows
    g = np.asarray(jax.grad(lambda lp: O.ppo_policy_loss(lp, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask),
                                                         0.2)[0])(jnp.asarray(logp)))
    r = np.exp(logp - old)
    dead = ((adv > 0) & (r > 1.2)) | ((adv < 0) & (r < 0.8)) | (mask == 0)
    assert dead.any() and np.all(g[dead] == 0) and np.all(g[~dead] != 0)
