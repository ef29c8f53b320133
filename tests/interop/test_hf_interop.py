"""Hugging Face GPT-2 interop: a transformers checkpoint loads into GPT with the same logits, and ours
loads into transformers with no missing or unexpected keys. Offline: tiny random models only."""
import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from lineage_jax.interop import hf  # noqa: E402

SHAPES = {
    "small": dict(n_layer=2, n_embd=48, n_head=3, n_positions=40, vocab_size=101),
    "odd": dict(n_layer=3, n_embd=64, n_head=4, n_inner=128, n_positions=40, vocab_size=77),
}
TOL = 1e-4


def torch_model(seed: int, **shape):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(**shape, bos_token_id=shape["vocab_size"] - 1,
                                  eos_token_id=shape["vocab_size"] - 1, attn_implementation="eager",
                                  initializer_range=0.3)   # logits of order 10, not 0.1: a sharper test
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():   # LayerNorms away from (1, 0) so their mapping is exercised too
        for name, p in model.named_parameters():
            if "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def torch_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids).long()).logits.numpy()


def random_ids(vocab: int, B: int = 2, T: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (B, T)).astype(np.int32)


@pytest.mark.parametrize("name", list(SHAPES))
def test_round_trip_logits(name, tmp_path):
    shape = SHAPES[name]
    theirs = torch_model(1, **shape)
    theirs.save_pretrained(tmp_path / "hf", safe_serialization=True)
    model, params = hf.load(tmp_path / "hf")
    c = model.cfg
    assert (c.layers, c.width, c.heads, c.context, c.vocab_size) == (
        shape["n_layer"], shape["n_embd"], shape["n_head"], shape["n_positions"], shape["vocab_size"])
    assert c.mlp_ratio * c.width == (shape.get("n_inner") or 4 * shape["n_embd"])
    ids = random_ids(shape["vocab_size"])
    ours = np.asarray(model.apply({"params": params}, ids))
    assert ours.shape == (2, 40, shape["vocab_size"])
    want = torch_logits(theirs, ids)
    diff_in = float(np.abs(ours - want).max())
    assert diff_in <= TOL, diff_in

    hf.save(model, params, tmp_path / "ours")
    back, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours", output_loading_info=True,
                                                              attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    diff_out = float(np.abs(torch_logits(back.eval(), ids) - ours).max())
    assert diff_out <= TOL, diff_out
    print(f"{name}: max |logit diff| load {diff_in:.2e}, save {diff_out:.2e}")


def test_unscanned_padded_vocab_and_unprefixed_keys(tmp_path):
    """Keys without the ``transformer.`` prefix (older checkpoints, GPT2Model), a tied lm_head present and
    mask buffers are all accepted; scan_layers=False and vocab_multiple padding give the same logits."""
    from safetensors.numpy import load_file, save_file

    shape = SHAPES["small"]
    theirs = torch_model(2, **shape)
    theirs.save_pretrained(tmp_path / "hf", safe_serialization=True)
    tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
    bare = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    bare["lm_head.weight"] = bare["wte.weight"]
    bare["h.0.attn.bias"] = np.tril(np.ones((1, 1, 40, 40), np.float32))
    save_file(bare, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    model, params = hf.load(tmp_path / "hf", scan_layers=False, vocab_multiple=8, attn_chunks=4)
    assert params["wte"].shape == (104, 48) and "blocks_1" in params
    ids = random_ids(shape["vocab_size"], seed=1)
    ours = np.asarray(model.apply({"params": params}, ids))[..., :shape["vocab_size"]]
    assert float(np.abs(ours - torch_logits(theirs, ids)).max()) <= TOL
    hf.save(model, params, tmp_path / "ours")   # padding rows dropped, per-layer params stacked back
    back, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert float(np.abs(torch_logits(back.eval(), ids) - ours).max()) <= TOL


def one_line_error(fn) -> str:
    with pytest.raises(hf.InteropError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def test_errors_are_one_line(tmp_path):
    assert "no such directory" in one_line_error(lambda: hf.load(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    assert "config.json" in one_line_error(lambda: hf.load(tmp_path / "empty"))
    xlnet = tmp_path / "xlnet"
    xlnet.mkdir()
    (xlnet / "config.json").write_text(json.dumps({"model_type": "xlnet"}))
    msg = one_line_error(lambda: hf.load(xlnet))
    assert "'xlnet'" in msg and "supported: gpt2" in msg
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    cfg = {"model_type": "gpt2", "vocab_size": 11, "n_positions": 8, "n_embd": 8, "n_layer": 1, "n_head": 2}
    (gpt / "config.json").write_text(json.dumps(cfg))
    (gpt / "pytorch_model.bin").write_bytes(b"")
    assert "pickle" in one_line_error(lambda: hf.load(gpt))
    (gpt / "config.json").write_text(json.dumps({**cfg, "n_inner": 12}))
    assert "n_inner=12 is not a multiple of n_embd=8" in one_line_error(lambda: hf.load(gpt))
    (gpt / "config.json").write_text(json.dumps({**cfg, "activation_function": "relu"}))
    assert "activation_function 'relu'" in one_line_error(lambda: hf.load(gpt))


def test_convert_to_run_dir_samples(tmp_path):
    from lineage_jax.decode import generate_text, load_for_inference

    shape = dict(n_layer=2, n_embd=32, n_head=2, n_positions=16, vocab_size=257)
    theirs = torch_model(3, **shape)
    theirs.save_pretrained(tmp_path / "hf", safe_serialization=True)
    run_dir = hf.convert_to_run_dir(tmp_path / "hf", tmp_path / "run")
    cfg, model, params, tokenizer = load_for_inference(run_dir)
    assert cfg.model.vocab_size == 257 and cfg.data.tokenizer == "byte"
    ids = random_ids(257, B=1, T=16, seed=2)
    ours = np.asarray(model.apply({"params": jax.device_get(params)}, ids))
    assert float(np.abs(ours - torch_logits(theirs, ids)).max()) <= TOL
    text = generate_text(model, params, tokenizer, "ab", 3, temperature=0)
    assert text.startswith("ab")
    # greedy continuation equals transformers' own argmax, token by token
    toks = [97, 98]
    for _ in range(3):
        toks.append(int(torch_logits(theirs, np.array([toks]))[0, -1].argmax()))
    from lineage_jax.tokenize import get_tokenizer
    assert text == get_tokenizer("byte").decode(toks)
    with pytest.raises(hf.InteropError, match="already holds a checkpoint"):
        hf.convert_to_run_dir(tmp_path / "hf", run_dir)
