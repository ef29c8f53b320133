"""``lineage finetune`` end to end on a converted tiny Hugging Face GPT-2: LoRA for two steps, sample,
merge, export to peft (= peft over the Hugging Face model), ``convert --to-hf``; QLoRA (nf4) the same
way; bad flags are one line before JAX starts."""
import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from lineage_jax import cli  # noqa: E402

TRAIN = ["train.steps=2", "train.batch_size=8", "optim.warmup_steps=0", "optim.lr=0.05", "train.eval_every=0",
         "train.ckpt_every=2", "train.log_every=1"]


def hf_gpt2(path):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=64, n_head=2, n_layer=2, vocab_size=260, n_positions=16,
                                  activation_function="gelu_new", attn_implementation="eager",
                                  bos_token_id=259, eos_token_id=259)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(path, safe_serialization=True)
    return model


def run(*argv):
    return cli.main(["finetune", *argv])


@pytest.mark.slow
def test_finetune_sample_merge_export(tmp_path, capsys):
    base = hf_gpt2(tmp_path / "hf")
    out = tmp_path / "ft"
    assert run("--from", str(tmp_path / "hf"), "--run-dir", str(out), "--lora-rank", "2", "--lora-targets", "q,v,mlp",
               "--no-progress", *TRAIN) == 0
    assert "trained" in capsys.readouterr().out
    assert json.loads((out / "adapter.json").read_text())["lora"] == {"rank": 2, "alpha": 16.0,
                                                                     "targets": ["q", "v", "mlp"]}
    assert cli.main(["sample", "--run-dir", str(out), "--prompt", "ab", "--max-new-tokens", "3", "--json",
                     "--strategy", "greedy"]) == 0
    tokens = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tokens"]
    assert len(tokens) == 5

    from lineage_jax.decode import load_for_inference
    from lineage_jax.decode.load import load_adapted
    _, model, merged, _, adapters, _ = load_adapted(out)
    assert float(np.abs(adapters["blocks"]["attn"]["query"]["lora_b"]).max()) > 0     # trained
    assert run("merge", "--run-dir", str(out), "--out", str(tmp_path / "merged")) == 0
    _, _, again, _ = load_for_inference(tmp_path / "merged")
    for x, y in zip(jax.tree.leaves(again), jax.tree.leaves(merged)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    peft = pytest.importorskip("peft")
    assert run("export-peft", "--run-dir", str(out), "--out", str(tmp_path / "peft")) == 0
    ids = np.random.default_rng(0).integers(0, 260, (2, 16))
    ours = np.asarray(jax.jit(model.apply)({"params": merged}, ids))
    with torch.no_grad():
        theirs = peft.PeftModel.from_pretrained(base, tmp_path / "peft")(torch.from_numpy(ids)).logits.numpy()
    assert np.abs(ours - theirs).max() <= 1e-5

    assert cli.main(["convert", "--to-hf", "--run-dir", str(out), "--out", str(tmp_path / "hf_merged")]) == 0
    exported = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf_merged").eval()
    with torch.no_grad():
        np.testing.assert_allclose(exported(torch.from_numpy(ids)).logits.numpy(), ours, atol=1e-5)


@pytest.mark.slow
def test_qlora_finetune_resumes_and_samples(tmp_path, capsys):
    hf_gpt2(tmp_path / "hf")
    out = tmp_path / "ft"
    args = ["--from", str(tmp_path / "hf"), "--run-dir", str(out), "--lora-rank", "2", "--quant", "nf4", "--no-progress"]
    assert run(*args, *TRAIN) == 0
    assert run(*args, *TRAIN[:-4], "train.steps=3", "train.ckpt_every=1", "train.log_every=1",
               "train.eval_every=0") == 0                                                  # resumes at step 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert cli.main(["sample", "--run-dir", str(out), "--prompt", "a", "--max-new-tokens", "2", "--json"]) == 0
    assert run("--from", str(tmp_path / "hf"), "--run-dir", str(out), "--lora-rank", "4", *TRAIN) == 2
    assert "holds a fine-tune with rank 2" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--from", "x", "--run-dir", "y", "--lora-targets", "q,attn"], "allowed a comma list of q, k, v, o, mlp"),
    (["--from", "x", "--run-dir", "y", "--quant", "fp8"], "--quant=fp8: allowed none, nf4, int8"),
    (["--from", "x", "--run-dir", "y", "--lora-mode", "fused"], "--lora-mode=fused: allowed onthefly, merged"),
    (["--run-dir", "y"], "--from RUN_OR_HF_DIR is required"),
    (["squash", "--run-dir", "y"], "allowed actions merge, export-peft"),
    (["merge", "--run-dir", "y"], "--out DIR is required"),
])
def test_bad_flags_are_one_line(argv, message, capsys):
    assert run(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
