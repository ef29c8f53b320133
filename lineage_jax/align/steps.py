"""The pure alignment steps ``step(state, batch) -> (state, metrics)``, one per stage, like
``train.step.make_train_step``: each closes over the model, the optimizer and its hyper-parameters
and is jitted (and sharded) by ``align.setup``. The state is ``train.state.TrainState``.

Batches (B rows of T tokens, right-padded; ``mask`` 1 on response tokens, ``lengths`` real tokens):

* SFT   {"tokens", "mask"}
* RM    {"chosen", "chosen_lengths", "rejected", "rejected_lengths"}
* DPO   {"chosen", "chosen_mask", "rejected", "rejected_mask", "ref_chosen", "ref_rejected"}: the frozen
        reference's sequence log-probabilities [B], computed before the step (``make_logprob_fn``)
* PPO   {"tokens", "mask", "old_logp", "old_values", "advantages", "returns"} (targets' positions, [B, T-1]),
        plus {"ptx_tokens", "ptx_mask"} for InstructGPT's pretraining-mix term when ``ptx_coef > 0``
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from lineage_jax.align import heads, objectives as O
from lineage_jax.train.state import TrainState


def policy_logprobs(model, lm_params, tokens, mask):
    """(per-token log π [B, T-1], the target mask [B, T-1]) of right-padded rows."""
    logits = model.apply({"params": lm_params}, tokens[:, :-1])
    return O.token_logprobs(logits, tokens[:, 1:]), mask[:, 1:]


def make_logprob_fn(model) -> Callable:
    """(lm params, tokens, mask) -> sequence log-probabilities [B] and response lengths [B]."""
    def fn(lm_params, tokens, mask):
        logp, m = policy_logprobs(model, lm_params, tokens, mask)
        return O.sequence_logprob(logp, m), jnp.sum(m, axis=-1)
    return fn


def _update(tx, state: TrainState, loss_fn, batch):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = TrainState(step=state.step + 1, params=params, opt_state=opt_state, loss_scale=state.loss_scale)
    return new, {"loss": loss, "grad_norm": optax.global_norm(grads), **metrics}


def make_sft_step(model, tx) -> Callable:
    """Supervised fine-tuning: NLL of the response tokens only."""
    def loss_fn(params, batch):
        logp, m = policy_logprobs(model, params, batch["tokens"], batch["mask"])
        return O.sft_loss(logp, m), {"response_tokens": jnp.sum(m)}

    return lambda state, batch: _update(tx, state, loss_fn, batch)


def make_rm_step(model, tx) -> Callable:
    """Reward model: Bradley–Terry on (chosen, rejected), both rows in one forward pass."""
    def loss_fn(params, batch):
        tokens = jnp.concatenate([batch["chosen"], batch["rejected"]])
        lengths = jnp.concatenate([batch["chosen_lengths"], batch["rejected_lengths"]])
        r = heads.sequence_rewards(model, params, tokens, lengths)
        rc, rr = jnp.split(r, 2)
        loss, acc = O.bradley_terry_loss(rc, rr)
        return loss, {"accuracy": acc, "margin": jnp.mean(rc - rr)}

    return lambda state, batch: _update(tx, state, loss_fn, batch)


def make_rm_eval(model) -> Callable:
    """(params, batch) -> {"loss", "accuracy"} of held-out pairs."""
    def fn(params, batch):
        r = heads.sequence_rewards(model, params, jnp.concatenate([batch["chosen"], batch["rejected"]]),
                                   jnp.concatenate([batch["chosen_lengths"], batch["rejected_lengths"]]))
        loss, acc = O.bradley_terry_loss(*jnp.split(r, 2))
        return {"loss": loss, "accuracy": acc}
    return fn


def make_dpo_step(model, tx, *, beta: float, kind: str = "sigmoid", label_smoothing: float = 0.0) -> Callable:
    """DPO (or IPO) against the reference's precomputed sequence log-probabilities."""
    O.check_dpo(beta, kind, label_smoothing)
    logprob = make_logprob_fn(model)

    def loss_fn(params, batch):
        tokens = jnp.concatenate([batch["chosen"], batch["rejected"]])
        pi, n = logprob(params, tokens, jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]]))
        (pc, pr), (nc, nr) = jnp.split(pi, 2), jnp.split(n, 2)
        rc, rr = batch["ref_chosen"], batch["ref_rejected"]
        if kind == "ipo":   # Azar et al.: per-token log-ratios (trl's normalisation)
            pc, pr, rc, rr = pc / nc, pr / nr, rc / nc, rr / nr
        losses, r_w, r_l = O.dpo_loss(pc, pr, rc, rr, beta=beta, kind=kind, label_smoothing=label_smoothing)
        return jnp.mean(losses), {"reward_accuracy": jnp.mean((r_w > r_l).astype(jnp.float32)),
                                  "reward_margin": jnp.mean(r_w - r_l), "logp_chosen": jnp.mean(pc)}

    return lambda state, batch: _update(tx, state, loss_fn, batch)


def make_value_fn(model) -> Callable:
    """(params {"lm", "head"}, tokens [B, T]) -> (log π of each target [B, T-1], values [B, T-1]): the value at
    target position t reads the hidden state of input position t, where token t+1 is chosen."""
    def fn(params, tokens):
        logits, h = heads.apply_with_hidden(model, params["lm"], tokens[:, :-1])
        return O.token_logprobs(logits, tokens[:, 1:]), heads.scalar(params["head"], h)
    return fn


def make_ppo_step(model, tx, *, clip: float = 0.2, vf_coef: float = 0.1, vf_clip: float = 0.2,
                  ptx_coef: float = 0.0) -> Callable:
    """One PPO update on a minibatch of scored rollouts: clipped surrogate + vf_coef · clipped value
    loss (+ ptx_coef · NLL of pretraining-mix rows: InstructGPT's PPO-ptx, eq. 2)."""
    value_fn = make_value_fn(model)

    def loss_fn(params, batch):
        logp, values = value_fn(params, batch["tokens"])
        m = batch["mask"]
        pg, clipfrac, approx_kl = O.ppo_policy_loss(logp, batch["old_logp"], batch["advantages"], m, clip)
        vf = O.value_loss(values, batch["old_values"], batch["returns"], m, vf_clip)
        loss = pg + vf_coef * vf
        metrics = {"policy_loss": pg, "value_loss": vf, "clipfrac": clipfrac, "approx_kl": approx_kl}
        if ptx_coef > 0:
            lp, pm = policy_logprobs(model, params["lm"], batch["ptx_tokens"], batch["ptx_mask"])
            metrics["ptx_loss"] = O.sft_loss(lp, pm)
            loss = loss + ptx_coef * metrics["ptx_loss"]
        return loss, metrics

    return lambda state, batch: _update(tx, state, loss_fn, batch)


def make_score_fn(model, *, kl_coef: float, gamma: float, lam: float) -> Callable:
    """(policy params, reference lm params, reward params, rollouts {"tokens", "mask" [B, T], "lengths"}) -> the PPO batch:
    old log-probs and values, the reference's log-probs, the reward model's score, KL-shaped rewards,
    whitened GAE advantages and returns, with the mean score and KL for the logs."""
    value_fn = make_value_fn(model)

    def fn(policy, ref_lm, reward, rollouts):
        tokens, m = rollouts["tokens"], rollouts["mask"][:, 1:]   # token mask -> target positions
        logp, values = value_fn(policy, tokens)
        ref_logp = O.token_logprobs(model.apply({"params": ref_lm}, tokens[:, :-1]), tokens[:, 1:])
        score = heads.sequence_rewards(model, reward, tokens, rollouts["lengths"])
        rewards, kl = O.kl_shaped_rewards(score, logp, ref_logp, m, kl_coef)
        adv, ret = O.gae(rewards, values, m, gamma, lam)
        batch = {"tokens": tokens, "mask": m, "old_logp": logp * m, "old_values": values * m,
                 "advantages": O.whiten(adv, m), "returns": ret}
        return batch, {"score": jnp.mean(score), "kl": jnp.mean(jnp.sum(kl, axis=-1))}
    return fn
