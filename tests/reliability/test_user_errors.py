"""Every bad input a newcomer's probe found escaping as a traceback (issue 15, root cause 7) is now
one line: run through ``lineage_jax.cli.main`` in-process, each case exits 2, prints exactly one
stderr line starting ``error: `` that names the offending key, flag or file, and writes nothing
where it should not (no run directory, no output directory, no tokenizer). Most fail before JAX
work; none compiles."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from lineage_jax import cli
from lineage_jax.data.pipeline import prepare as prep

LATIN1 = "Caf\u00e9 cr\u00e8me, na\u00efve fa\u00e7ade: un r\u00e9sum\u00e9 tr\u00e8s \u00e9l\u00e9gant.\n".encode("latin-1") * 8
TINY = ["model.layers=1", "model.width=32", "model.heads=2", "model.context=32", "model.attn_chunks=2",
        "train.batch_size=8", "train.steps=4", "optim.warmup_steps=1", "--no-progress", "--no-sample"]
GPT2 = {"model_type": "gpt2", "vocab_size": 300, "n_positions": 32, "n_layer": 1, "n_embd": 32, "n_head": 2}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A small prepared dataset (byte tokenizer, rows of 32), copied per case before it is damaged."""
    root = tmp_path_factory.mktemp("prepared")
    en = [s for s in (Path(__file__).resolve().parents[2] / "scripts" / "langid_text" / "en.txt")
          .read_text(encoding="utf-8").splitlines() if s.strip()]
    for k in range(6):
        (root / "docs").mkdir(exist_ok=True)
        (root / "docs" / f"en{k}.txt").write_text(" ".join(en[6 * k:6 * k + 6]), encoding="utf-8")
    prep.prepare([str(root / "docs")], str(root / "ds"), prep.PrepareConfig(seq_len=32, eval_fraction=0.3))
    return root / "ds"


def _damaged_copy(prepared, tmp_path, damage):
    ds = tmp_path / "ds"
    shutil.copytree(prepared, ds)
    damage(ds / "prepared_tokens" / "1.0.0")
    return ds


def _truncate_train_records(d: Path):
    f = next(d.glob("*-train.array_record-*"))
    f.write_bytes(f.read_bytes()[:1000])


# Each case: (id, build(tmp_path, prepared) -> (argv, what stderr names, paths that must not exist)).
def _train(tmp, *overrides):
    return ["train", *TINY, f"run_dir={tmp / 'run'}", *overrides]


def case_tokenizer_unknown(tmp, prepared):
    return _train(tmp, "data.tokenizer=gpt5"), "data.tokenizer='gpt5'", [tmp / "run"]


def case_tokenizer_empty_dir(tmp, prepared):
    (tmp / "tok").mkdir()
    return _train(tmp, f"data.tokenizer={tmp / 'tok'}"), str(tmp / "tok"), [tmp / "run"]


def case_tokenizer_not_json(tmp, prepared):
    (tmp / "tok.json").write_text("this is not json {", encoding="utf-8")
    return _train(tmp, f"data.tokenizer={tmp / 'tok.json'}"), str(tmp / "tok.json"), [tmp / "run"]


def case_tokenizer_json_not_a_tokenizer(tmp, prepared):
    (tmp / "tok").mkdir()
    (tmp / "tok" / "tokenizer.json").write_text(json.dumps({"version": "1.0"}), encoding="utf-8")
    return _train(tmp, f"data.tokenizer={tmp / 'tok'}"), str(tmp / "tok" / "tokenizer.json"), [tmp / "run"]


def case_tokenizer_spm_garbage(tmp, prepared):
    pytest.importorskip("sentencepiece")
    (tmp / "spm.model").write_bytes(b"\x00\x01 not a model proto" * 20)
    return _train(tmp, f"data.tokenizer={tmp / 'spm.model'}"), str(tmp / "spm.model"), [tmp / "run"]


def case_text_files_binary(tmp, prepared):
    (tmp / "blob.bin").write_bytes(np.arange(4096, dtype=np.int32).tobytes())
    return _train(tmp, f"data.text_files={tmp / 'blob.bin'}"), str(tmp / "blob.bin"), [tmp / "run"]


def case_text_files_latin1(tmp, prepared):
    (tmp / "latin1.txt").write_bytes(LATIN1)
    return _train(tmp, f"data.text_files={tmp / 'latin1.txt'}"), str(tmp / "latin1.txt"), [tmp / "run"]


def case_text_files_empty(tmp, prepared):
    (tmp / "empty.txt").write_bytes(b"")
    return _train(tmp, f"data.text_files={tmp / 'empty.txt'}"), str(tmp / "empty.txt"), [tmp / "run"]


def case_text_files_too_little(tmp, prepared):
    (tmp / "short.txt").write_text("a few words only\n", encoding="utf-8")
    return _train(tmp, f"data.text_files={tmp / 'short.txt'}"), "short.txt' (train split): 17 tokens", [tmp / "run"]


def case_config_not_utf8(tmp, prepared):
    (tmp / "c.yaml").write_bytes(b"# r\xe9sum\xe9\ntrain:\n  steps: 3\n")
    return ["train", "--config", str(tmp / "c.yaml"), f"run_dir={tmp / 'run'}"], str(tmp / "c.yaml"), [tmp / "run"]


def case_prompts_file_not_utf8(tmp, prepared):
    (tmp / "prompts.txt").write_bytes(LATIN1)
    return (["sample", "--run-dir", str(tmp / "run"), "--prompts-file", str(tmp / "prompts.txt")],
            "--prompts-file=", [tmp / "run"])


def case_sentencepiece_missing(tmp, prepared):
    (tmp / "text.txt").write_text("some text to train on\n" * 50, encoding="utf-8")
    return (["tokenizer", "train", "--kind", "sentencepiece", "--text-files", str(tmp / "text.txt"),
             "--vocab-size", "300", "--out", str(tmp / "tok"), "--no-progress"], "'sentencepiece' package", [tmp / "tok"])


def case_prepared_bad_metadata(tmp, prepared):
    ds = _damaged_copy(prepared, tmp, lambda d: (d / "metadata.json").write_text("{not json", encoding="utf-8"))
    return _train(tmp, f"data.prepared_dir={ds}"), f"data.prepared_dir={ds}", [tmp / "run"]


def case_prepared_truncated_records(tmp, prepared):
    ds = _damaged_copy(prepared, tmp, _truncate_train_records)
    return _train(tmp, f"data.prepared_dir={ds}"), f"{ds}: the prepared dataset is damaged", [tmp / "run"]


def case_convert_incomplete_config(tmp, prepared):
    (tmp / "hf").mkdir()
    (tmp / "hf" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}), encoding="utf-8")
    return (["convert", "--from-hf", str(tmp / "hf"), "--run-dir", str(tmp / "run")],
            f"{tmp / 'hf' / 'config.json'}: lacks 'vocab_size'", [tmp / "run"])


def case_convert_config_not_an_object(tmp, prepared):
    (tmp / "hf").mkdir()
    (tmp / "hf" / "config.json").write_text("[1, 2]", encoding="utf-8")
    return (["convert", "--from-hf", str(tmp / "hf"), "--run-dir", str(tmp / "run")],
            str(tmp / "hf" / "config.json"), [tmp / "run"])


def case_convert_truncated_safetensors(tmp, prepared):
    from safetensors.numpy import save_file
    (tmp / "hf").mkdir()
    (tmp / "hf" / "config.json").write_text(json.dumps(GPT2), encoding="utf-8")
    save_file({"wte.weight": np.zeros((300, 32), np.float32)}, str(tmp / "hf" / "model.safetensors"))
    blob = (tmp / "hf" / "model.safetensors").read_bytes()
    (tmp / "hf" / "model.safetensors").write_bytes(blob[:len(blob) // 2])
    return (["convert", "--from-hf", str(tmp / "hf"), "--run-dir", str(tmp / "run")],
            str(tmp / "hf" / "model.safetensors"), [tmp / "run"])


def case_prepare_out_is_file(tmp, prepared):
    (tmp / "out").write_text("my notes\n", encoding="utf-8")
    docs = prepared.parent / "docs"
    return (["data", "prepare", "--inputs", str(docs), "--out", str(tmp / "out"), "--no-progress"],
            f"--out {tmp / 'out'}: is a file", [])


def case_prepare_inputs_binary(tmp, prepared):
    (tmp / "blob.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 10)
    return (["data", "prepare", "--inputs", str(tmp / "blob.bin"), "--out", str(tmp / "out"), "--no-progress"],
            f"--inputs: '{tmp / 'blob.bin'}' is a binary file", [tmp / "out"])


CASES = {name[len("case_"):]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2(name, tmp_path, prepared, capsys, monkeypatch):
    if name == "sentencepiece_missing":
        monkeypatch.setitem(sys.modules, "sentencepiece", None)    # `import sentencepiece` now raises ImportError
    argv, names, absent = CASES[name](tmp_path, prepared)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert names in err[0], err
    for p in absent:
        assert not p.exists(), f"{p} was written"
    assert {p: p.read_bytes() for p in before} == before      # no input file was changed
