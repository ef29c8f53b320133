"""The AI feedback model of Constitutional AI / RLAIF (Bai et al. 2022), at toy scale, as pure functions.

The judge is a language model (the SFT policy's trunk, as the CAI paper's feedback model is a trained
assistant) with one logistic head per principle of the constitution: ``verdicts`` is P(response follows
principle k) for every k, read off the final hidden state of the response's last token. It is trained
only on the constitution's worked examples (``constitution.worked_examples``): each example teaches the
head of its own principle (``judge_loss``: binary cross-entropy on that head, the others masked out).

From the verdicts, two pure decisions:

* ``preference``: which of two responses the constitution prefers — the first principle (in priority
  order) on which the two get different verdicts decides; when none does, the higher mean P(follows).
  This is the AI label that replaces the human's in RLAIF.
* ``revision_choice``: SL-CAI's critique and revision. A tiny policy cannot write a critique in words, so
  the critique is the judge's verdicts on the policy's own sample, and the revision is the best of
  several fresh samples of the same policy by the constitution (the sample itself when it breaks no
  principle). The SFT-on-revisions step is ordinary SFT.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from lineage_jax.align import heads
from lineage_jax.train.state import TrainState


def init_judge(key, lm_params, width: int, n_principles: int) -> dict:
    """{"lm": the trunk's params, "heads": {"kernel" [D, K], "bias" [K]}} with small initial logits."""
    return {"lm": lm_params, "heads": {
        "kernel": jax.random.normal(key, (width, n_principles), jnp.float32) * (0.1 / width ** 0.5),
        "bias": jnp.zeros((n_principles,), jnp.float32)}}


def judge_specs() -> dict:
    """Logical partition specs of the heads (kernel over ``embed``; replicated over principles)."""
    return {"kernel": P("embed", None), "bias": P(None)}


def judge_logits(model, params: dict, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
    """Logits [B, K] of P(follows principle k) for right-padded rows, at each row's last real token."""
    _, h = heads.apply_with_hidden(model, params["lm"], tokens)
    last = jnp.take_along_axis(h, (lengths - 1)[:, None, None], axis=1)[:, 0].astype(jnp.float32)
    return last @ params["heads"]["kernel"].astype(jnp.float32) + params["heads"]["bias"]


def judge_loss(logits: jax.Array, principle: jax.Array, follows: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean binary cross-entropy of each row's own principle, accuracy of that verdict).

    ``logits`` [B, K]; ``principle`` int [B] (which head the example teaches); ``follows`` [B] in {0, 1}.
    Equals ``torch.nn.functional.binary_cross_entropy_with_logits`` on the gathered logits."""
    z = jnp.take_along_axis(logits, principle[:, None].astype(jnp.int32), axis=1)[:, 0]
    y = follows.astype(jnp.float32)
    loss = jnp.mean(optax.sigmoid_binary_cross_entropy(z, y))
    return loss, jnp.mean(((z > 0) == (y > 0.5)).astype(jnp.float32))


def make_judge_step(model, tx):
    """step(state, {"tokens", "lengths", "principle", "follows"}) -> (state, {"loss", "accuracy"})."""
    def loss_fn(params, batch):
        loss, acc = judge_loss(judge_logits(model, params, batch["tokens"], batch["lengths"]), batch["principle"],
                               batch["follows"])
        return loss, {"accuracy": acc}

    def step(state: TrainState, batch):
        (loss, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return (TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                           opt_state=opt_state, loss_scale=state.loss_scale), {"loss": loss, **m})
    return step


def verdicts(model, params: dict, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
    """P(follows principle k) [B, K]."""
    return jax.nn.sigmoid(judge_logits(model, params, tokens, lengths))


def constitution_key(probs: jax.Array) -> jax.Array:
    """A score [...] whose order is the constitution's: the verdicts (P > 0.5) weighted 2^(K-1-k), so an
    earlier principle outranks all later ones together, plus the mean P(follows) (< 1) to break ties."""
    K = probs.shape[-1]
    weights = 2.0 ** jnp.arange(K - 1, -1, -1, dtype=jnp.float32)
    return jnp.sum((probs > 0.5) * weights, axis=-1) + jnp.mean(probs, axis=-1)


def preference(probs_a: jax.Array, probs_b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(a preferred over b [B] bool, the deciding principle [B]: the first k whose verdicts differ, or -1
    when the verdicts agree everywhere and the mean P(follows) decided)."""
    va, vb = probs_a > 0.5, probs_b > 0.5
    differ = va != vb
    first = jnp.where(jnp.any(differ, axis=-1), jnp.argmax(differ, axis=-1), -1)
    return constitution_key(probs_a) > constitution_key(probs_b), first


def revision_choice(probs: jax.Array) -> jax.Array:
    """probs [N, B, K] (candidate 0 = the policy's own sample, 1.. = fresh samples) -> index [B] of the
    revision: 0 when the sample breaks no principle, else the candidate the constitution ranks highest
    (the first such on ties, so the sample itself is kept when nothing beats it)."""
    key = constitution_key(probs)
    clean = jnp.all(probs[0] > 0.5, axis=-1)
    return jnp.where(clean, 0, jnp.argmax(key, axis=0))
