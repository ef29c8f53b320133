"""Rollouts record what teacher forcing recomputes, and the policy's sequence log-probabilities equal
transformers' on a converted tiny GPT-2 (the same numbers a trl trainer would feed its losses)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax import models
from lineage_jax.align import dataset, objectives as O, steps, task
from lineage_jax.align.rollout import rollout
from lineage_jax.config import load_config
from lineage_jax.tokenize import get_tokenizer


def _model():
    cfg = load_config("tiny", ["model.layers=1", "model.width=32", "model.heads=2", "model.context=32",
                               "model.attn_chunks=1"])
    m = models.build(cfg.model)
    return m, nn.unbox(jax.jit(m.init)(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))["params"])   # one compile


def test_rollout_logprobs_equal_teacher_forced_recompute():
    m, params = _model()
    tok = get_tokenizer("byte")
    prompts = [task.make_prompt(__import__("random").Random(i)) for i in range(6)]
    ids, lens = dataset.encode_prompts(tok, prompts, 12)
    out = rollout(m, params, ids, lens, jax.random.key(1), new_tokens=20, eos_id=tok.eos_id, vocab_limit=257)
    toks, mask = np.asarray(out["tokens"]), np.asarray(out["mask"])
    for b in range(6):   # the prompt is kept, the response follows it, nothing after the end
        assert list(toks[b, :lens[b]]) == list(ids[b, :lens[b]])
        assert mask[b, :lens[b]].sum() == 0 and mask[b].sum() == out["lengths"][b] - lens[b] > 0
        assert np.all(toks[b, out["lengths"][b]:] == 0)
    logp, tm = jax.jit(steps.policy_logprobs, static_argnums=0)(m, params, out["tokens"], out["mask"])
    np.testing.assert_allclose(np.asarray(out["logp"]), np.asarray(logp * tm), atol=2e-5)
    again = rollout(m, params, ids, lens, jax.random.key(1), new_tokens=20, eos_id=tok.eos_id, vocab_limit=257)
    assert np.array_equal(np.asarray(again["tokens"]), toks)   # seeded


def test_sequence_logprobs_equal_transformers_on_a_converted_gpt2(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from lineage_jax.interop import hf
    torch.manual_seed(0)
    theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, n_positions=32, vocab_size=257, attn_implementation="eager",
        initializer_range=0.2)).eval()
    theirs.save_pretrained(tmp_path / "hf", safe_serialization=True)
    model, params = hf.load(tmp_path / "hf")
    rows = list(task.examples(0, 4))
    enc = dataset.encode(get_tokenizer("byte"), [r["prompt"] for r in rows], [r["chosen"] for r in rows], 32)
    ours, n = steps.make_logprob_fn(model)(params, jnp.asarray(enc["tokens"]), jnp.asarray(enc["mask"]))
    with torch.no_grad():
        t = torch.from_numpy(enc["tokens"]).long()
        lp = torch.log_softmax(theirs(t).logits[:, :-1].double(), -1).gather(-1, t[:, 1:, None])[..., 0]
        want = (lp * torch.from_numpy(enc["mask"][:, 1:])).sum(-1).numpy()
    np.testing.assert_allclose(np.asarray(ours), want, rtol=1e-4, atol=1e-4)
    assert list(np.asarray(n)) == [len(r["chosen"]) + 1 for r in rows]
    assert float(O.sft_loss(*steps.policy_logprobs(model, params, enc["tokens"], enc["mask"]))) == pytest.approx(
        -want.sum() / enc["mask"][:, 1:].sum(), rel=1e-4)
