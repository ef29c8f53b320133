"""End to end against trl's ``DPOTrainer`` (trl 1.16 keeps the DPO loss inside its trainer): a tiny random
Hugging Face GPT-2 built offline from a config, converted to ours with ``interop.hf``; trl's trainer and our
``steps.make_dpo_step`` start from the same weights, see the same pairs (tokenised the same way: one id
per byte, end-of-text appended) and take plain SGD steps. The loss at step 0 and the weights after the
steps must agree (trl's updated model is converted back with the same interop)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lineage_jax.align import dataset, steps, task
from lineage_jax.tokenize import get_tokenizer
from lineage_jax.train.state import TrainState
from parallel import precision

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
tokenizers = pytest.importorskip("tokenizers")

BETA, LR, N = 0.5, 0.5, 4


def _byte_tokenizer():
    """A Hugging Face tokenizer with our byte ids on ASCII text: one token per character, id = its byte,
    <|endoftext|> = 256 (the pairs of the toy task are ASCII)."""
    vocab = {chr(b): b for b in range(32, 127)} | {"<|endoftext|>": 256}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex("."), "isolated")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>",
                                                pad_token="<|endoftext|>")


def _setup(tmp_path, max_steps=1):
    from lineage_jax.interop import hf
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, n_positions=32, vocab_size=257, attn_implementation="eager",
        initializer_range=0.2))
    gpt2.save_pretrained(tmp_path / "init", safe_serialization=True)
    ref = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "init")
    rows = list(task.examples(3, N))
    data = datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in ("prompt", "chosen", "rejected")})
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), beta=BETA, learning_rate=LR, optim="sgd",
                         lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0,
                         per_device_train_batch_size=N, max_steps=max_steps, bf16=False, fp16=False,
                         gradient_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no",
                         logging_steps=1, disable_tqdm=True, seed=0)
    trainer = trl.DPOTrainer(model=gpt2, ref_model=ref, args=args, train_dataset=data,
                             processing_class=_byte_tokenizer())
    model, params = hf.load(tmp_path / "init")
    tok = get_tokenizer("byte")
    c = dataset.encode(tok, [r["prompt"] for r in rows], [r["chosen"] for r in rows], 32)
    r = dataset.encode(tok, [r["prompt"] for r in rows], [r["rejected"] for r in rows], 32)
    logprob = jax.jit(steps.make_logprob_fn(model))
    batch = {"chosen": c["tokens"], "chosen_mask": c["mask"], "rejected": r["tokens"], "rejected_mask": r["mask"],
             "ref_chosen": logprob(params, c["tokens"], c["mask"])[0],
             "ref_rejected": logprob(params, r["tokens"], r["mask"])[0]}
    tx = optax.sgd(LR)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       loss_scale=precision.loss_scale_for("fp32", 1.0))
    return trainer, model, jax.jit(steps.make_dpo_step(model, tx, beta=BETA)), state, batch


def _assert_same_weights(tmp_path, torch_model, ours):
    from lineage_jax.interop import hf
    torch_model.save_pretrained(tmp_path / "after", safe_serialization=True)
    _, theirs = hf.load(tmp_path / "after")
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-4,
                                   err_msg=jax.tree_util.keystr(path))


def test_dpo_step_equals_trl_dpotrainer_loss_and_sgd_update(tmp_path):
    trainer, _, step, state, batch = _setup(tmp_path)
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(N)])
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    with torch.no_grad():
        for p in trainer.model.parameters():
            p -= LR * p.grad
    state, m = step(state, batch)
    assert float(m["loss"]) == pytest.approx(float(loss.detach()), rel=1e-5, abs=1e-6)
    _assert_same_weights(tmp_path, trainer.model, state.params)


@pytest.mark.slow
def test_three_dpotrainer_steps_equal_three_of_ours(tmp_path):
    """The whole of ``trainer.train()`` (its optimizer, scheduler and loop), 3 SGD steps on a fixed batch."""
    trainer, _, step, state, batch = _setup(tmp_path, max_steps=3)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    ours = []
    for _ in range(3):
        state, m = step(state, batch)
        ours.append(float(m["loss"]))
    np.testing.assert_allclose(ours, losses, rtol=1e-3, atol=1e-4)   # the trainer logs rounded losses
    _assert_same_weights(tmp_path, trainer.model, state.params)
