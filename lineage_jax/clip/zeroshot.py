"""Zero-shot classification by prompts (Radford et al. 2021, §3.1.4) and the supervised linear probe
it is compared with (§3.2), as pure functions of embeddings.

Zero-shot: each class name is written into K prompt templates ("a small {}", "a large {}"), the text
tower embeds every prompt, the K unit vectors are averaged and renormalised (CLIP's prompt
ensembling, "computed in embedding space"), and an image goes to the class whose ensemble
embedding is nearest in cosine. No image of any class was labelled.

With templates that name a visible nuisance attribute (size here) the mean ensemble fails (the two
size prompts point nearly opposite ways); ``predict_max`` takes the best-matching prompt instead.

Linear probe: multinomial logistic regression on the frozen image features, L2-regularised,
fitted full-batch with L-BFGS (what CLIP's probes use, via scikit-learn); it needs labelled images
of each class, which zero-shot does not.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lineage_jax.clip.loss import normalize

TEMPLATES = ("a small {}", "a large {}")


def prompts(class_names: Sequence[str], templates: Sequence[str] = TEMPLATES) -> list[str]:
    """Class-major: [t(c) for c in classes for t in templates] (C·K texts)."""
    for t in templates:
        if t.count("{}") != 1:
            raise ValueError(f"template {t!r}: must hold exactly one {{}} for the class name")
    return [t.format(c) for c in class_names for t in templates]


def ensemble(prompt_emb: jax.Array, n_classes: int) -> jax.Array:
    """[C·K, E] prompt embeddings (class-major) -> [C, E]: each class's K unit vectors averaged, renormalised."""
    e = normalize(prompt_emb).reshape(n_classes, -1, prompt_emb.shape[-1])
    return normalize(e.mean(axis=1))


def class_embeddings(encode_text: Callable[[list[str]], jax.Array], class_names: Sequence[str],
                     templates: Sequence[str] = TEMPLATES) -> jax.Array:
    """[C, E] zero-shot classifier weights from a text encoder (texts -> [N, E])."""
    return ensemble(encode_text(prompts(class_names, templates)), len(class_names))


def predict(image_emb: jax.Array, class_emb: jax.Array) -> jax.Array:
    """argmax over classes of the cosine similarity (the scale does not change the argmax)."""
    return jnp.argmax(normalize(image_emb) @ normalize(class_emb).T, axis=-1)


def predict_max(image_emb: jax.Array, prompt_emb: jax.Array, n_classes: int) -> jax.Array:
    """The class of the best-matching prompt: argmax_c max_k cos(image, t_k(c)). Where the templates vary an
    attribute the image shows (here "a small {}" vs "a large {}"), the two prompts' unit vectors point apart,
    their average is dominated by what they share least, and CLIP's mean ensemble loses the class; the max
    lets each image use the template that describes it."""
    sims = normalize(image_emb) @ normalize(prompt_emb).T                      # [N, C·K], class-major
    return jnp.argmax(sims.reshape(sims.shape[0], n_classes, -1).max(axis=-1), axis=-1)


def accuracy(pred, labels) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(labels)))


# ---- the supervised linear probe ----

def probe_objective(wb, x: jax.Array, y: jax.Array, l2: float) -> jax.Array:
    """mean cross-entropy of softmax(x W + b) + (l2 / 2) ‖W‖² (the bias is not penalised)."""
    w, b = wb
    logits = x @ w + b
    nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], -1)[:, 0]
    return jnp.mean(nll) + 0.5 * l2 * jnp.sum(w * w)


def fit_probe(features, labels, n_classes: int, l2: float = 1e-3, steps: int = 200) -> tuple[jax.Array, jax.Array]:
    """(W [D, C], b [C]) minimising ``probe_objective`` with optax's L-BFGS (zoom line search), from zero.
    The objective is strictly convex for l2 > 0, so the minimiser is unique and matches scikit-learn's
    ``LogisticRegression(C = 1 / (l2 · N))`` (tests/clip)."""
    x, y = jnp.asarray(features, jnp.float32), jnp.asarray(labels, jnp.int32)
    f = lambda wb: probe_objective(wb, x, y, l2)   # noqa: E731
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(f)

    @jax.jit
    def run(wb):
        def body(carry, _):
            wb, state = carry
            value, grad = value_and_grad(wb, state=state)
            updates, state = opt.update(grad, state, wb, value=value, grad=grad, value_fn=f)
            return (optax.apply_updates(wb, updates), state), None
        return jax.lax.scan(body, (wb, opt.init(wb)), None, length=steps)[0][0]

    return run((jnp.zeros((x.shape[1], n_classes)), jnp.zeros((n_classes,))))


def probe_predict(wb, features) -> jax.Array:
    w, b = wb
    return jnp.argmax(jnp.asarray(features, jnp.float32) @ w + b, axis=-1)
