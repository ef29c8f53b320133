"""GRPO: group relative policy optimisation (Shao et al. 2024, DeepSeekMath §4.1; DeepSeek-AI 2025, R1).

For each prompt q, G completions o_1 … o_G are sampled from the old policy and scored by a verifier (r_i).
No value model: the baseline is the group itself,

    Â_i = (r_i − mean(r)) / (std(r) + 1e-4)                    (every token of o_i gets Â_i)

and the policy maximises the clipped surrogate with a KL penalty to the reference policy π_ref,

    J = E[ 1/G Σ_i 1/|o_i| Σ_t ( min(ρ_t Â_i, clip(ρ_t, 1−ε, 1+ε) Â_i) − β D_KL[π_θ ‖ π_ref]_t ) ],
    ρ_t = π_θ(o_t | q, o_<t) / π_old(o_t | q, o_<t),
    D_KL ≈ k3 = π_ref/π_θ − log(π_ref/π_θ) − 1                (Schulman's unbiased, non-negative estimator)

``loss_type`` picks the normalisation (trl's names): ``"grpo"`` (per-sequence mean, then mean over sequences:
the paper), ``"bnpo"`` (mean over all tokens), ``"dr_grpo"`` (Liu et al. 2025's Dr. GRPO: the token sum over
B · max_len, with no per-response length division; pair it with ``scale="none"`` advantages, no std division).

``baseline`` picks what the group statistics are taken over. ``"reward"`` (the paper) uses r_i itself;
``"length"`` is the length-normalised baseline: the rewards are first divided by the response lengths |o_i|
(reward per token), and the group baseline and scale are those of the normalised rewards,

    r'_i = r_i / |o_i|,    Â_i = (r'_i − mean(r')) / (std(r') + 1e-4)      (or r'_i − mean(r') with scale="none")

the length-corrected group normalisation of TIC-GRPO (Pang & Jin 2025, arXiv 2508.02833), which removes the
response-length variance from the advantage's scale. Of two right answers the shorter now gets the larger
advantage, of two wrong ones the longer gets the smaller penalty per token: a pressure towards short right
answers. trl 1.16 has no equivalent (its ``scale_rewards`` is group | batch | none over r_i).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from lineage_jax.config import ConfigError
from lineage_jax.reasoning.sft import token_logprobs

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")
SCALES = ("group", "none")
BASELINES = ("reward", "length")


def group_advantages(rewards: jax.Array, group: int, scale: str = "group", eps: float = 1e-4, *,
                     baseline: str = "reward", lengths: jax.Array | None = None) -> jax.Array:
    """Rewards [N·G] (the G samples of each prompt adjacent) -> advantages [N·G]: r − the group mean, divided by
    the group's standard deviation (Bessel-corrected, + eps) unless ``scale="none"`` (Dr. GRPO). With
    ``baseline="length"`` r is first divided by ``lengths`` [N·G] (tokens per completion, each >= 1)."""
    if scale not in SCALES:
        raise ConfigError(f"scale={scale}: one of {', '.join(SCALES)}")
    if baseline not in BASELINES:
        raise ConfigError(f"baseline={baseline}: one of {', '.join(BASELINES)}")
    if group < 2 or rewards.shape[0] % group:
        raise ConfigError(f"group={group}: at least 2 samples per prompt, dividing the {rewards.shape[0]} rewards")
    r = rewards.astype(jnp.float32)
    if baseline == "length":
        if lengths is None or jnp.shape(lengths) != rewards.shape:
            raise ConfigError(f"baseline=length needs lengths, one per reward ({rewards.shape[0]}), got "
                              f"{None if lengths is None else jnp.shape(lengths)}")
        r = r / jnp.maximum(jnp.asarray(lengths, jnp.float32), 1.0)
    r = r.reshape(-1, group)
    adv = r - r.mean(axis=1, keepdims=True)
    if scale == "group":
        adv = adv / (r.std(axis=1, ddof=1, keepdims=True) + eps)
    return adv.reshape(-1)


def k3(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    """Per-token KL estimate exp(ref − logp) − (ref − logp) − 1: >= 0, and 0 exactly where logp = ref."""
    d = ref_logp - logp
    return jnp.exp(d) - d - 1.0


def grpo_loss(logp: jax.Array, old_logp: jax.Array, ref_logp: jax.Array, advantages: jax.Array, mask: jax.Array, *,
              epsilon: float = 0.2, beta: float = 0.04, loss_type: str = "grpo", max_len: int | None = None
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """−J over per-token log-probs [B, T] of the policy, the sampling (old) policy and the reference,
    advantages [B] and the completion mask [B, T]. Returns (loss, metrics: kl, clip_fraction)."""
    if loss_type not in LOSS_TYPES:
        raise ConfigError(f"loss_type={loss_type}: one of {', '.join(LOSS_TYPES)}")
    if loss_type == "dr_grpo" and not max_len:
        raise ConfigError("loss_type=dr_grpo needs max_len (the maximum completion length)")
    mask = mask.astype(jnp.float32)
    ratio = jnp.exp(logp - old_logp)
    a = advantages[:, None]
    clipped = jnp.clip(ratio, 1 - epsilon, 1 + epsilon)
    per_token = -jnp.minimum(ratio * a, clipped * a)
    kl = k3(logp, ref_logp)
    if beta:
        per_token = per_token + beta * kl
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / jnp.maximum(mask.sum(-1), 1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / jnp.maximum(mask.sum(), 1.0)
    else:
        loss = (per_token * mask).sum() / (per_token.shape[0] * max_len)
    n = jnp.maximum(mask.sum(), 1.0)
    clip_frac = ((jnp.abs(ratio - 1) > epsilon) * mask).sum() / n
    return loss, {"kl": (kl * mask).sum() / n, "clip_fraction": clip_frac}


def make_grpo_step(apply: Callable, tx: optax.GradientTransformation, *, epsilon: float = 0.2, beta: float = 0.04,
                   loss_type: str = "grpo", max_len: int | None = None) -> Callable:
    """``step((params, opt_state), batch) -> (state, metrics)``, pure and jitted. ``batch``: tokens [B, W],
    mask [B, W] (1 where the next token was sampled), old_logp and ref_logp [B, W] (at the same index as the
    mask), advantages [B]. ``apply(params, tokens) -> logits``."""
    grpo_loss(jnp.zeros((1, 1)), jnp.zeros((1, 1)), jnp.zeros((1, 1)), jnp.zeros(1), jnp.ones((1, 1)),
              loss_type=loss_type, max_len=max_len)        # refuse a bad loss_type before compiling

    def loss_fn(params, b):
        logp = token_logprobs(apply(params, b["tokens"]), b["tokens"])
        return grpo_loss(logp, b["old_logp"][:, :-1], b["ref_logp"][:, :-1], b["advantages"], b["mask"][:, :-1],
                         epsilon=epsilon, beta=beta, loss_type=loss_type, max_len=max_len)

    @jax.jit
    def step(state, batch):
        params, opt_state = state
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), {"loss": loss, **metrics}
    return step


def sequence_logprobs(apply: Callable, params, tokens: jax.Array) -> jax.Array:
    """Per-token log-probs [B, W] of ``tokens`` under ``params`` (index t scores tokens[t + 1]; the last is 0),
    laid out like the sampler's ``logprobs``: the reference's (and, at μ = 1, the old policy's) inputs."""
    lp = token_logprobs(apply(params, tokens), tokens)
    return jnp.pad(lp, ((0, 0), (0, 1)))
