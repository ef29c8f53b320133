"""Hugging Face Llama / Mistral / Mixtral interop: tiny random odd-shaped transformers models (built
offline) load into ``Llama`` with the same logits; ours load back into transformers with no missing or
unexpected keys and the same logits; a converted run directory samples and fine-tunes."""
import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from lineage_jax.interop import hf, hf_llama  # noqa: E402

TOL = 1e-4
T = 24
ODD = dict(hidden_size=48, num_attention_heads=6, intermediate_size=72, vocab_size=61, num_hidden_layers=3,
           max_position_embeddings=T, rms_norm_eps=1e-5, rope_theta=500.0)
CASES = {   # name: (model_type, extra config)
    "llama-gqa2-untied": ("llama", dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "llama-gqa3-tied": ("llama", dict(num_key_value_heads=3, tie_word_embeddings=True)),
    "mistral-mqa": ("mistral", dict(num_key_value_heads=1, sliding_window=None)),
    "mixtral-5x2": ("mixtral", dict(num_key_value_heads=2, num_local_experts=5, num_experts_per_tok=2)),
}
CLASSES = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM"),
           "mixtral": ("MixtralConfig", "MixtralForCausalLM")}


def torch_model(kind: str, seed: int = 0, **shape):
    torch.manual_seed(seed)
    conf, cls = (getattr(transformers, n) for n in CLASSES[kind])
    cfg = conf(**shape, attn_implementation="eager", initializer_range=0.3)   # logits of order 10: a sharp test
    model = cls(cfg).eval()
    with torch.no_grad():   # RMSNorm weights away from 1 so their mapping is exercised too
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


def torch_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids).long()).logits.numpy()


def random_ids(vocab: int, B: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (B, T)).astype(np.int32)


@pytest.mark.parametrize("name", list(CASES))
def test_load_and_save_equal_transformers(name, tmp_path):
    kind, extra = CASES[name]
    theirs = torch_model(kind, **ODD, **extra)
    theirs.save_pretrained(tmp_path / "hf", safe_serialization=True)
    model, params = hf.load(tmp_path / "hf")
    c = model.cfg
    assert (c.arch, c.layers, c.width, c.heads, c.kv_heads, c.mlp_dim, c.vocab_size, c.context) == (
        "llama", 3, 48, 6, extra["num_key_value_heads"], 72, 61, T)
    assert (c.rope_theta, c.layernorm_eps, c.tied) == (500.0, 1e-5, extra.get("tie_word_embeddings", False))
    assert (c.moe_every, c.experts, c.moe_k) == ((1, 5, 2) if kind == "mixtral" else (0, c.experts, c.moe_k))
    ids = random_ids(61)
    ours = np.asarray(jax.jit(model.apply)({"params": params}, ids))
    assert ours.shape == (2, T, 61)
    want = torch_logits(theirs, ids)
    diff_in = float(np.abs(ours - want).max())
    assert diff_in <= TOL, diff_in

    if kind == "mistral":
        hf_llama.save(model, params, tmp_path / "ours", model_type="mistral")
    else:
        hf.save(model, params, tmp_path / "ours")          # dense -> llama, MoE -> mixtral
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == kind
    cls = getattr(transformers, CLASSES[kind][1])
    back, info = cls.from_pretrained(tmp_path / "ours", output_loading_info=True, attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    diff_out = float(np.abs(torch_logits(back.eval(), ids) - ours).max())
    assert diff_out <= TOL, diff_out
    print(f"{name}: max |logit diff| load {diff_in:.2e}, save {diff_out:.2e} (max |logit| {np.abs(want).max():.1f})")


def test_unscanned_padded_vocab_and_the_fused_mixtral_layout(tmp_path):
    """transformers 5's in-memory Mixtral layout (``mlp.experts.gate_up_proj``), unprefixed keys and a
    transformers 4 config.json (``rope_theta`` + ``rope_scaling: null``, no ``rope_parameters``) load too;
    scan_layers=False and vocab_multiple padding give the same logits, and save drops the padding."""
    from safetensors.torch import save_file

    kind, extra = CASES["mixtral-5x2"]
    theirs = torch_model(kind, 1, **ODD, **extra)
    theirs.save_pretrained(tmp_path / "hf", safe_serialization=True)
    fused = {k.removeprefix("model."): v.contiguous() for k, v in theirs.state_dict().items()}
    assert any(k.endswith("experts.gate_up_proj") for k in fused)
    save_file(fused, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    conf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert conf.pop("rope_parameters")["rope_theta"] == 500.0
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**conf, "rope_theta": 500.0, "rope_scaling": None}))
    model, params = hf.load(tmp_path / "hf", scan_layers=False, vocab_multiple=8, attn_chunks=4)
    assert params["wte"].shape == (64, 48) and params["lm_head"].shape == (48, 64) and "blocks_2" in params
    assert model.cfg.rope_theta == 500.0
    ids = random_ids(61, seed=1)
    ours = np.asarray(jax.jit(model.apply)({"params": params}, ids))[..., :61]
    assert float(np.abs(ours - torch_logits(theirs, ids)).max()) <= TOL
    hf.save(model, params, tmp_path / "ours")
    back, info = transformers.MixtralForCausalLM.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert float(np.abs(torch_logits(back.eval(), ids) - ours).max()) <= TOL


def one_line_error(fn) -> str:
    with pytest.raises(hf.InteropError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def test_errors_are_one_line(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    base = {"model_type": "llama", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12,
            "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 16}

    def err(**changes):
        (d / "config.json").write_text(json.dumps({**base, **changes}))
        return one_line_error(lambda: hf.load(d))

    assert "rope type 'linear' is not supported" in err(rope_scaling={"type": "linear", "factor": 2.0})
    assert "rope type 'yarn'" in err(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0})
    assert "head_dim=8 is not hidden_size/num_attention_heads=4" in err(head_dim=8)
    assert "attention_bias=true" in err(attention_bias=True)
    assert "mlp_bias=true" in err(mlp_bias=True)
    assert "hidden_act 'gelu'" in err(hidden_act="gelu")
    assert "lacks 'intermediate_size'" in err(intermediate_size=None)
    msg = err(model_type="mistral", sliding_window=4)
    assert "sliding_window=4 is smaller than the context 16" in msg and "context=4" in msg
    assert "model.kv_heads=3 must divide model.heads=2" in err(num_key_value_heads=3)
    assert "num_local_experts=1" in err(model_type="mixtral", num_local_experts=1)
    assert "no model.safetensors" in err()
    (d / "pytorch_model.bin").write_bytes(b"")
    assert "pickle" in err()
    (d / "pytorch_model.bin").unlink()

    theirs = torch_model("llama", **{**ODD, "num_hidden_layers": 1}, num_key_value_heads=2)
    theirs.save_pretrained(tmp_path / "hf", safe_serialization=True)
    from safetensors.numpy import load_file, save_file
    tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "num_key_value_heads": 3}))
    assert "'model.layers.0.self_attn.k_proj.weight' has shape (16, 48), config.json implies (24, 48)" in \
        one_line_error(lambda: hf.load(tmp_path / "hf"))
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    save_file({k: v for k, v in tensors.items() if k != "lm_head.weight"}, str(tmp_path / "hf" / "model.safetensors"))
    assert "no lm_head.weight" in one_line_error(lambda: hf.load(tmp_path / "hf"))
    save_file({**tensors, "model.layers.0.extra.weight": tensors["model.norm.weight"]},
              str(tmp_path / "hf" / "model.safetensors"))
    assert "unexpected tensor 'layers.0.extra.weight'" in one_line_error(lambda: hf.load(tmp_path / "hf"))
    with pytest.raises(hf.InteropError, match="model_type 'mixtral' cannot hold this model; allowed: llama, mistral"):
        hf_llama.save(*_dense(), tmp_path / "x", model_type="mixtral")


def _dense():
    from lineage_jax.config import ModelConfig
    from lineage_jax.models.llama import Llama
    return Llama(ModelConfig(arch="llama", vocab_size=11, context=4, layers=1, width=8, heads=2)), {}


@pytest.mark.slow   # GPT-2's convert -> run dir -> sample stays default (test_hf_interop.py)
def test_convert_to_run_dir_samples_and_fine_tunes(tmp_path):
    """``convert_to_run_dir`` -> ``lineage sample --run-dir ... --json`` (a subprocess) continues greedily as
    transformers does, token by token; ``lineage train`` resumes the converted run (fine-tuning)."""
    from lineage_jax.config import load_config
    from lineage_jax.decode import load_for_inference
    from lineage_jax.tokenize import get_tokenizer

    shape = {**ODD, "vocab_size": 300, "max_position_embeddings": 16, "num_hidden_layers": 2}
    theirs = torch_model("llama", 3, **shape, num_key_value_heads=2, tie_word_embeddings=False)
    theirs.save_pretrained(tmp_path / "hf", safe_serialization=True)
    run_dir = hf.convert_to_run_dir(tmp_path / "hf", tmp_path / "run")
    cfg, model, params, _ = load_for_inference(run_dir)
    assert (cfg.model.arch, cfg.model.kv_heads, cfg.model.tied, cfg.data.tokenizer) == ("llama", 2, False, "byte")
    ids = random_ids(300, B=1, seed=2)[:, :16]
    ours = np.asarray(jax.jit(model.apply)({"params": jax.device_get(params)}, ids))
    assert float(np.abs(ours - torch_logits(theirs, ids)).max()) <= TOL

    out = subprocess.run([sys.executable, "-m", "lineage_jax", "sample", "--run-dir", str(run_dir), "--prompt", "ab",
                          "--max-new-tokens", "4", "--strategy", "greedy", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    toks = [97, 98]
    for _ in range(4):   # transformers' own greedy continuation
        toks.append(int(torch_logits(theirs, np.array([toks]))[0, -1].argmax()))
    assert result["tokens"] == toks
    assert result["text"] == get_tokenizer("byte").decode(toks)

    from lineage_jax.train.loop import train
    tuned = load_config(str(run_dir / "config.yaml"), ["train.steps=2", "train.batch_size=8", "mesh.data=-1",
                                                        "optim.warmup_steps=0", "train.eval_every=0",
                                                        "train.ckpt_every=2", "train.log_every=1"])
    summary = train(tuned, progress=False, sample_chars=0)
    assert np.isfinite(summary["final_loss"])
    _, _, tuned_params, _ = load_for_inference(run_dir)
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), tuned_params, params)
    assert 0 < max(jax.tree.leaves(moved)) < 0.05   # two small steps away from the converted weights, not a fresh init


def test_convert_mixtral_to_run_dir(tmp_path):
    from lineage_jax.decode import load_for_inference

    shape = {**ODD, "vocab_size": 300, "max_position_embeddings": 16, "num_hidden_layers": 2}
    theirs = torch_model("mixtral", 4, **shape, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)
    theirs.save_pretrained(tmp_path / "hf", safe_serialization=True)
    cfg, model, params, _ = load_for_inference(hf.convert_to_run_dir(tmp_path / "hf", tmp_path / "run"))
    m = cfg.model
    assert (m.arch, m.moe_every, m.experts, m.moe_backend) == ("llama", 1, 4, "dropless")
    ids = random_ids(300, B=1, seed=2)[:, :16]
    ours = np.asarray(jax.jit(model.apply)({"params": jax.device_get(params)}, ids))
    assert float(np.abs(ours - torch_logits(theirs, ids)).max()) <= TOL
