"""The alignment objectives as pure functions, in the papers' symbols (β, ε, γ, λ).

Shapes: B sequences, T target positions (``tokens[:, 1:]``); ``mask`` [B, T] is 1 on response tokens.
Every loss reduces with masked means over the response tokens only.

* ``sft_loss``: next-token NLL on response tokens (InstructGPT's SFT, Ouyang et al. 2022, §3.5).
* ``bradley_terry_loss``: −log σ(r_chosen − r_rejected) (Christiano et al. 2017; Ouyang et al. 2022 eq. 1).
* ``dpo_loss``: −log σ(β[(log π − log π_ref)(y_w) − (log π − log π_ref)(y_l)]) (Rafailov et al. 2023 eq. 7);
  ``label_smoothing`` ε gives conservative DPO, ``kind="ipo"`` the squared loss (h − 1/(2β))² of
  Azar et al. 2023 eq. 17.
* PPO (Schulman et al. 2017) as InstructGPT ran it: ``kl_shaped_rewards`` (−β·KL per token, the reward
  model's score at the last response token), ``gae`` (Schulman et al. 2016), ``whiten``, the clipped
  surrogate ``ppo_policy_loss`` and the clipped ``value_loss``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lineage_jax.train.step import token_nll


def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log π(target | prefix) [B, T] in float32 (vocab-parallel friendly: no gather of the logits)."""
    return -token_nll(logits, targets)


def masked_sum(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    return jnp.sum(x * mask, axis=axis)


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    return jnp.sum(x * mask, axis=axis) / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)


def sequence_logprob(logp: jax.Array, mask: jax.Array) -> jax.Array:
    """log π(y | x) [B]: the response tokens' log-probabilities summed."""
    return masked_sum(logp, mask, axis=-1)


def sft_loss(logp: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean NLL over every response token of the batch (the prompt is context, not a target)."""
    return -masked_mean(logp, mask)


def bradley_terry_loss(r_chosen: jax.Array, r_rejected: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean −log σ(r_w − r_l), accuracy: share of pairs with r_w > r_l)."""
    margin = r_chosen - r_rejected
    return -jnp.mean(jax.nn.log_sigmoid(margin)), jnp.mean((margin > 0).astype(jnp.float32))


DPO_KINDS = ("sigmoid", "ipo")


def check_dpo(beta: float, kind: str, label_smoothing: float = 0.0) -> None:
    """One line for a bad DPO setting (called before anything compiles)."""
    if not beta > 0:
        raise ValueError(f"align.beta={beta}: must be > 0 (the KL strength of DPO's implicit reward)")
    if kind not in DPO_KINDS:
        raise ValueError(f"align.loss={kind!r}: allowed {', '.join(DPO_KINDS)}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"align.label_smoothing={label_smoothing}: must be in [0, 0.5)")


def dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, *, beta: float, kind: str = "sigmoid",
             label_smoothing: float = 0.0):
    """Per-pair DPO losses [B] and the implicit rewards β(log π − log π_ref) of chosen and rejected.

    ``pi_*``/``ref_*`` [B]: sequence log-probabilities under the policy and the frozen reference (for
    IPO, Azar et al. normalise by length: pass per-token means). h = (π_w − ref_w) − (π_l − ref_l)."""
    h = (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)
    if kind == "sigmoid":
        losses = (-(1 - label_smoothing) * jax.nn.log_sigmoid(beta * h)
                  - label_smoothing * jax.nn.log_sigmoid(-beta * h))
    elif kind == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"kind {kind!r}: allowed {', '.join(DPO_KINDS)}")
    return losses, beta * (pi_chosen - ref_chosen), beta * (pi_rejected - ref_rejected)


def last_index(mask: jax.Array) -> jax.Array:
    """Index [B] of each row's last response position (the one that carries the score)."""
    T = mask.shape[-1]
    return T - 1 - jnp.argmax(mask[:, ::-1] > 0, axis=-1)


def kl_shaped_rewards(score, logp, ref_logp, mask, kl_coef: float):
    """(rewards [B, T], per-token KL estimate [B, T]): r_t = −β(log π − log π_ref)_t on response tokens,
    plus the reward model's ``score`` [B] at the last one (InstructGPT eq. 2, per token as in Ziegler
    et al. 2019)."""
    kl = (logp - ref_logp) * mask
    rewards = -kl_coef * kl
    last = jax.nn.one_hot(last_index(mask), mask.shape[-1], dtype=rewards.dtype)
    return rewards + score[:, None] * last, kl


def gae(rewards, values, mask, gamma: float, lam: float):
    """(advantages, returns) [B, T] by generalised advantage estimation (Schulman et al. 2016, eq. 16):
    δ_t = r_t + γ V_{t+1} − V_t, A_t = δ_t + γλ A_{t+1}, scanned backwards; positions off the mask have
    value and reward 0, so a row's bootstrap ends at its last response token. Returns = A + V."""
    values = values * mask
    rewards = rewards * mask
    next_v = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)
    deltas = rewards + gamma * next_v - values

    def back(carry, d):
        a = d + gamma * lam * carry
        return a, a

    _, adv = jax.lax.scan(back, jnp.zeros_like(deltas[:, 0]), deltas.T, reverse=True)
    adv = adv.T * mask
    return adv, adv + values


def whiten(x, mask, shift_mean: bool = True):
    """(x − mean) / std over the masked entries (unbiased variance, like trl); ``shift_mean=False`` keeps the mean."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = jnp.sum(mask)
    var = var * n / jnp.maximum(n - 1, 1.0)
    out = (x - mean) * jax.lax.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def ppo_policy_loss(logp, old_logp, advantages, mask, clip: float):
    """(clipped surrogate loss, clip fraction, approx KL(old‖new)): mean over response tokens of
    max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)), ρ = exp(log π − log π_old) (Schulman et al. 2017, eq. 7)."""
    ratio = jnp.exp(logp - old_logp)
    loss = jnp.maximum(-advantages * ratio, -advantages * jnp.clip(ratio, 1 - clip, 1 + clip))
    clipfrac = masked_mean((jnp.abs(ratio - 1) > clip).astype(jnp.float32), mask)
    approx_kl = masked_mean(0.5 * (logp - old_logp) ** 2, mask)
    return masked_mean(loss, mask), clipfrac, approx_kl


def value_loss(values, old_values, returns, mask, clip: float):
    """½ · mean over response tokens of max((V − R)², (clip(V, V_old ± ε) − R)²) (the clipped value loss
    of the PPO baselines InstructGPT builds on)."""
    clipped = old_values + jnp.clip(values - old_values, -clip, clip)
    return 0.5 * masked_mean(jnp.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)
