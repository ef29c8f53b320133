"""GRPO's pieces: the advantages and the loss equal trl's GRPOTrainer computation on the same per-token
log-probabilities, rewards and masks (loss types grpo, bnpo, dr_grpo; β and ε set explicitly), k3 is
non-negative and zero at equality, bad options are refused before compiling, and the pure step raises the
log-probability of a rewarded completion."""
import collections
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lineage_jax.config import ConfigError
from lineage_jax.reasoning import grpo, tiny


def _inputs(seed=0, B=6, T=7):
    rng = np.random.default_rng(seed)
    logp = -rng.uniform(0.05, 3.0, (B, T))
    old = logp + rng.normal(0, 0.3, (B, T))        # some ratios outside [1-ε, 1+ε]
    ref = logp + rng.normal(0, 0.5, (B, T))
    mask = (np.arange(T)[None] < rng.integers(1, T + 1, B)[:, None]).astype(np.float32)
    rewards = rng.integers(0, 2, B).astype(np.float32) + 0.1 * rng.integers(0, 2, B)
    return logp, old, ref, mask, rewards


def test_k3_is_nonnegative_and_zero_at_equality():
    x = jax.random.normal(jax.random.key(0), (1000,)) * 3
    y = jax.random.normal(jax.random.key(1), (1000,)) * 3
    assert float(grpo.k3(x, y).min()) >= 0
    np.testing.assert_array_equal(np.asarray(grpo.k3(x, x)), 0.0)
    # and it estimates KL(π_θ ‖ π_ref) without bias: E_{o~π_θ}[k3] = KL for two categoricals
    p, q = jax.nn.log_softmax(x[:8]), jax.nn.log_softmax(y[:8])
    np.testing.assert_allclose(float((jnp.exp(p) * grpo.k3(p, q)).sum()),
                               float((jnp.exp(p) * (p - q)).sum()), rtol=1e-5)


def test_advantages_by_hand_and_refusals():
    r = jnp.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    a = np.asarray(grpo.group_advantages(r, 3))
    mean, std = 1 / 3, np.std([1, 0, 0], ddof=1)
    np.testing.assert_allclose(a[:3], (np.array([1, 0, 0]) - mean) / (std + 1e-4), rtol=1e-6)
    np.testing.assert_array_equal(a[3:], 0.0)          # a group all right (or all wrong) teaches nothing
    np.testing.assert_allclose(np.asarray(grpo.group_advantages(r, 3, "none"))[:3], [2 / 3, -1 / 3, -1 / 3], rtol=1e-6)
    with pytest.raises(ConfigError, match="group=4"):
        grpo.group_advantages(r, 4)
    with pytest.raises(ConfigError, match="scale=batch"):
        grpo.group_advantages(r, 3, "batch")
    with pytest.raises(ConfigError, match="loss_type=dapo"):
        grpo.make_grpo_step(lambda p, t: t, optax.sgd(1.0), loss_type="dapo")
    with pytest.raises(ConfigError, match="max_len"):
        grpo.make_grpo_step(lambda p, t: t, optax.sgd(1.0), loss_type="dr_grpo")


def test_length_normalised_baseline_written_out():
    """baseline="length": the group statistics of r_i / |o_i| (TIC-GRPO's length-corrected normalisation),
    checked against a plain-Python computation; with equal lengths in a group it is the paper's advantage
    (std-scaled) or that advantage / |o| (unscaled); the shorter of two right answers gets more."""
    rewards = [1.0, 1.0, 0.0, 0.0, 1.1, 0.1]
    lengths = [4, 8, 5, 3, 6, 2]
    for scale in ("group", "none"):
        want = []
        for g in (slice(0, 3), slice(3, 6)):
            x = [r / n for r, n in zip(rewards[g], lengths[g])]
            mean = sum(x) / 3
            std = (sum((v - mean) ** 2 for v in x) / 2) ** 0.5
            want += [(v - mean) / (std + 1e-4) if scale == "group" else v - mean for v in x]
        got = grpo.group_advantages(jnp.array(rewards), 3, scale, baseline="length", lengths=jnp.array(lengths))
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-7)
    got = np.asarray(grpo.group_advantages(jnp.array(rewards), 3, baseline="length", lengths=jnp.array(lengths)))
    assert got[0] > got[1] > got[2]                        # right and short > right and long > wrong
    plain = np.asarray(grpo.group_advantages(jnp.array(rewards), 3))
    assert plain[0] == plain[1]                             # which the paper's baseline cannot tell apart
    same = jnp.array([6, 6, 6, 2, 2, 2])
    r = jnp.array(rewards)
    np.testing.assert_allclose(np.asarray(grpo.group_advantages(r, 3, baseline="length", lengths=same)),
                               np.asarray(grpo.group_advantages(r, 3)), rtol=1e-3)   # eps aside: scale-free
    np.testing.assert_allclose(np.asarray(grpo.group_advantages(r, 3, "none", baseline="length", lengths=same)),
                               np.asarray(grpo.group_advantages(r, 3, "none")) / np.asarray(same), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(grpo.group_advantages(r, 3, baseline="reward", lengths=same)),
                                  np.asarray(grpo.group_advantages(r, 3)))          # the default ignores lengths
    with pytest.raises(ConfigError, match="baseline=length needs lengths"):
        grpo.group_advantages(r, 3, baseline="length")
    with pytest.raises(ConfigError, match="baseline=median"):
        grpo.group_advantages(r, 3, baseline="median")


def _trl_loss(logp, old, ref, mask, adv, *, loss_type, beta, epsilon, max_len):
    torch = pytest.importorskip("torch")
    trl = pytest.importorskip("trl")
    from trl import GRPOTrainer
    t = lambda x: torch.tensor(np.asarray(x), dtype=torch.float64)
    me = types.SimpleNamespace(
        beta=beta, epsilon_low=epsilon, epsilon_high=epsilon, loss_type=loss_type, max_completion_length=max_len,
        importance_sampling_level="token", top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        use_vllm=False, vllm_importance_sampling_correction=False, aux_loss_enabled=False,
        _entropy_bonus_enabled=False, current_gradient_accumulation_steps=1, model=types.SimpleNamespace(training=False),
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None),
        _metrics=collections.defaultdict(lambda: collections.defaultdict(list)),
        accelerator=types.SimpleNamespace(gather=lambda x: x, gather_for_metrics=lambda x: x, num_processes=1,
                                          reduce=lambda x, reduction: x, sync_gradients=True),
        _get_per_token_logps_and_entropies=lambda *a, **k: (t(logp), torch.zeros_like(t(logp)), None))
    B, T = logp.shape
    inputs = {"prompt_ids": torch.zeros((B, 1), dtype=torch.long), "prompt_mask": torch.ones((B, 1)),
              "completion_ids": torch.zeros((B, T), dtype=torch.long), "completion_mask": t(mask),
              "advantages": t(adv), "old_per_token_logps": t(old), "ref_per_token_logps": t(ref)}
    loss = float(GRPOTrainer._compute_loss(me, None, inputs))
    return loss, me._metrics["eval"]["kl"][0]


@pytest.mark.slow    # importing trl takes ~10-30 s here
@pytest.mark.parametrize("loss_type,scale", [("grpo", "group"), ("bnpo", "group"), ("dr_grpo", "none")])
def test_loss_equals_trl(loss_type, scale):
    pytest.importorskip("trl")
    jax.config.update("jax_enable_x64", True)
    try:
        logp, old, ref, mask, rewards = _inputs()
        adv = np.asarray(grpo.group_advantages(jnp.asarray(rewards), 3, scale))
        ours, metrics = grpo.grpo_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv),
                                 jnp.asarray(mask), epsilon=0.2, beta=0.04, loss_type=loss_type, max_len=7)
        theirs, their_kl = _trl_loss(logp, old, ref, mask, adv, loss_type=loss_type, beta=0.04, epsilon=0.2, max_len=7)
    finally:
        jax.config.update("jax_enable_x64", False)
    np.testing.assert_allclose(float(ours), theirs, rtol=1e-6)
    np.testing.assert_allclose(float(metrics["kl"]), their_kl, rtol=1e-6)


@pytest.mark.slow
def test_advantages_equal_trls_group_statistics():
    pytest.importorskip("trl")
    import torch
    from trl.trainer.utils import nanstd
    _, _, _, _, rewards = _inputs(3, B=12)
    r = torch.tensor(rewards, dtype=torch.float64)
    mean = r.view(-1, 4).mean(1).repeat_interleave(4)
    std = nanstd(r.view(-1, 4), dim=1).repeat_interleave(4)
    np.testing.assert_allclose(np.asarray(grpo.group_advantages(jnp.asarray(rewards), 4)),
                               ((r - mean) / (std + 1e-4)).numpy(), rtol=1e-5)


def test_the_step_raises_a_rewarded_completion():
    model, params = tiny.init(tiny.TinyConfig(vocab=8, context=6, d=16, heads=2, layers=1), jax.random.key(0))
    apply = lambda p, t: model.apply({"params": p}, t)
    tokens = jnp.array([[1, 2, 3, 4, 0, 0], [1, 2, 5, 6, 0, 0]])
    mask = jnp.array([[0, 1, 1, 0, 0, 0]] * 2, jnp.float32)        # tokens 2..3 were sampled
    lp = grpo.sequence_logprobs(apply, params, tokens)
    batch = {"tokens": tokens, "mask": mask, "old_logp": lp, "ref_logp": lp,
             "advantages": grpo.group_advantages(jnp.array([1.0, 0.0]), 2)}
    step = grpo.make_grpo_step(apply, optax.adam(1e-2), beta=0.04)
    state = (params, optax.adam(1e-2).init(params))
    for _ in range(5):
        state, metrics = step(state, batch)
    after = grpo.sequence_logprobs(apply, state[0], tokens)
    gain = ((after - lp) * mask).sum(-1)
    assert float(gain[0]) > 0 > float(gain[1])
    assert float(metrics["kl"]) > 0
