"""Beam search with a length penalty (Wu et al. 2016; HF's sum-logprob / len^alpha convention)
returns the same hypotheses and scores as ``transformers``' ``generate(num_beams=...)`` on a tiny
randomly initialised GPT-2, for early_stopping True / False / "never" and EOS hits."""
import numpy as np
import pytest

from lineage_jax.decode.beam import beam_search

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # initializer_range=0.3 spreads the logits, so the float noise between HF's KV-cached run and
    # our full-prefix reruns cannot reorder candidates.
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=64,
                                  initializer_range=0.3, bos_token_id=1, eos_token_id=3, pad_token_id=0,
                                  attn_implementation="eager")
    m = transformers.GPT2LMHeadModel(cfg).eval()
    assert m.config._attn_implementation == "eager"
    return m


def _step_fn(model):
    def step(tokens):
        with torch.no_grad():
            return model(torch.from_numpy(np.asarray(tokens, np.int64))).logits[:, -1].float().numpy()
    return step


# (prompts, eos_id, num_beams, length_penalty, early_stopping, max_new_tokens); the EOS ids were
# chosen (from the greedy continuation) so that hypotheses do end early in most cases.
CASES = [
    ([[5, 9, 2]], 49, 3, 1.0, False, 10),
    ([[5, 9, 2]], 49, 4, 0.0, True, 12),
    ([[5, 9, 2]], 49, 4, -1.0, False, 10),
    ([[17, 4, 4, 30, 8]], 33, 4, 1.0, False, 10),
    ([[17, 4, 4, 30, 8]], 49, 5, 1.5, "never", 10),
    ([[40, 41]], 11, 3, 1.0, True, 10),
    ([[40, 41]], 49, 2, 2.0, "never", 8),
    ([[5, 9, 2], [40, 41, 7]], 11, 3, 1.0, False, 9),
]


@pytest.mark.parametrize("prompts, eos, W, alpha, early, n", CASES)
def test_beam_search_equals_hf_generate(model, prompts, eos, W, alpha, early, n):
    x = torch.tensor(prompts)
    with torch.no_grad():
        ref = model.generate(x, attention_mask=torch.ones_like(x), num_beams=W, length_penalty=alpha,
                             do_sample=False, early_stopping=early, max_new_tokens=n, eos_token_id=eos,
                             pad_token_id=0, num_return_sequences=W, output_scores=True,
                             return_dict_in_generate=True)
    seqs, scores, lens = beam_search(_step_fn(model), np.array(prompts), num_beams=W, max_new_tokens=n,
                                     eos_id=eos, pad_id=0, length_penalty=alpha, early_stopping=early)
    B, P = x.shape
    ref_seqs = ref.sequences.numpy().reshape(B, W, -1)
    np.testing.assert_allclose(np.asarray(scores), ref.sequences_scores.numpy().reshape(B, W), rtol=1e-4, atol=1e-5)
    seqs, lens = np.asarray(seqs), np.asarray(lens)
    for b in range(B):
        for w in range(W):
            L = lens[b, w]
            # HF pads past a hypothesis' end with `pad_token_id or eos` (0 is falsy, so EOS here).
            np.testing.assert_array_equal(seqs[b, w, :L], ref_seqs[b, w, :L])
            assert L == ref_seqs.shape[-1] or (ref_seqs[b, w, L - 1] == eos and (ref_seqs[b, w, L:] == eos).all())
    assert (lens < P + n).any() or early == "never"   # the cases do exercise early EOS endings


def test_beam_of_one_is_greedy_and_scores_are_sorted():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(20, 20)).astype(np.float32) * 3        # a Markov chain "model"
    step = lambda toks: table[np.asarray(toks)[:, -1]]
    seqs, scores, lens = beam_search(step, [[1, 2]], num_beams=1, max_new_tokens=6, length_penalty=0.0)
    greedy = [1, 2]
    for _ in range(6):
        greedy.append(int(np.argmax(table[greedy[-1]])))
    assert np.asarray(seqs[0, 0]).tolist() == greedy
    seqs, scores, _ = beam_search(step, [[1, 2]], num_beams=4, max_new_tokens=6)
    s = np.asarray(scores[0])
    assert (np.diff(s) <= 0).all()
    # a wider beam never finds a worse best hypothesis (no EOS: every hypothesis has full length)
    _, s1, _ = beam_search(step, [[1, 2]], num_beams=1, max_new_tokens=6)
    assert s[0] >= float(s1[0, 0]) - 1e-6
