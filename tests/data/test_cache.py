"""Token caches (``data/cache.py``): a damaged cache is rebuilt with a note, never read as tokens or
raised as a traceback; ``lineage cache list`` shows them with sizes, ``lineage cache clear`` deletes
them (all, or the least recently used beyond ``--max-size``), and a cleared cache is rebuilt."""
import json
import logging
import os

import numpy as np
import pytest

from lineage_jax import cli
from lineage_jax.config import DataConfig
from lineage_jax.data import cache, loader
from lineage_jax.data import load_splits
from lineage_jax.tokenize import ByteTokenizer

TOK = ByteTokenizer()


def _source(tmp_path, name="a", text="some text for the token cache, long enough to split. " * 20):
    (tmp_path / "src").mkdir(exist_ok=True)
    f = tmp_path / "src" / f"{name}.txt"
    f.write_text(text, encoding="utf-8")
    return DataConfig(text_files=(str(f),), data_dir=str(tmp_path / "data"))


DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:100]),
    "empty": lambda p: p.write_bytes(b""),
    "not npy": lambda p: p.write_bytes(b"garbage" * 50),
    "ids outside the vocabulary": lambda p: np.save(p, np.full(50, 9999, np.int32)),
    "float array": lambda p: np.save(p, np.zeros(50, np.float32)),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_cache_is_rebuilt_with_a_note(kind, tmp_path, caplog, monkeypatch):
    cfg = _source(tmp_path)
    first = load_splits(cfg, TOK)
    train_path, _ = loader.cache_paths(cfg, TOK)
    DAMAGE[kind](train_path)
    reads = []
    real = loader.load_documents
    monkeypatch.setattr(loader, "load_documents", lambda c: reads.append(c) or real(c))
    with caplog.at_level(logging.WARNING, logger="lineage_jax.data.cache"):
        again = load_splits(cfg, TOK)
    np.testing.assert_array_equal(again.train, first.train)
    np.testing.assert_array_equal(again.eval, first.eval)
    assert len(reads) == 1                                    # tokenized again from the source
    assert any(str(train_path) in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(np.load(train_path), first.train)   # the rebuilt cache is whole


def _json(capsys, argv):
    assert cli.main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_cache_list_and_clear(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "data"))      # the default data dir, redirected
    old, new = _source(tmp_path, "old"), _source(tmp_path, "new", "another text altogether. " * 80)
    old, new = DataConfig(text_files=old.text_files), DataConfig(text_files=new.text_files)
    load_splits(old, TOK)
    for p in loader.cache_paths(old, TOK):
        os.utime(p, (1_000_000_000, 1_000_000_000))           # last used long ago
    load_splits(new, TOK)
    (cache.cache_dir(tmp_path / "data") / "x.train.npy.123.abcd.tmp").write_bytes(b"half")   # a killed write

    listed = _json(capsys, ["cache", "list", "--json"])
    assert listed["dir"] == str(cache.cache_dir(tmp_path / "data"))
    names = [c["name"] for c in listed["caches"]]
    assert len(names) == 3 and "(temporary files)" in names
    sizes = {c["name"]: c["bytes"] for c in listed["caches"]}
    old_name = loader.cache_paths(old, TOK)[0].name.removesuffix(".train.npy")
    new_name = loader.cache_paths(new, TOK)[0].name.removesuffix(".train.npy")
    assert sizes[old_name] == sum(p.stat().st_size for p in loader.cache_paths(old, TOK))
    assert listed["bytes"] == sum(sizes.values())
    assert cli.main(["cache", "list"]) == 0
    assert "3 token cache(s)" in capsys.readouterr().out

    cleared = _json(capsys, ["cache", "clear", "--max-size", f"{sizes[new_name]}B", "--json"])
    assert {c["name"] for c in cleared["removed"]} == {old_name, "(temporary files)"}   # least recently used
    assert cleared["kept"] == 1 and all(p.is_file() for p in loader.cache_paths(new, TOK))
    assert not any(p.exists() for p in loader.cache_paths(old, TOK))

    assert _json(capsys, ["cache", "clear", "--json"])["kept"] == 0
    assert not any(cache.cache_dir(tmp_path / "data").iterdir())
    load_splits(new, TOK)                                      # a cleared cache is simply rebuilt
    assert all(p.is_file() for p in loader.cache_paths(new, TOK))


def test_cache_bad_size_is_one_line(tmp_path, capsys):
    assert cli.main(["cache", "clear", "--data-dir", str(tmp_path), "--max-size", "lots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --max-size=lots")


def test_clear_spares_the_temporary_file_of_a_live_writer(tmp_path, monkeypatch):
    """A run tokenizing now writes ``<cache>.<its pid>.<id>.tmp``: clearing the caches must not pull it
    from under that run (its rename would fail); a dead writer's leftover goes."""
    import os
    from lineage_jax.data import cache
    d = cache.cache_dir(tmp_path)
    d.mkdir(parents=True)
    live = d / f"x.train.npy.{os.getpid()}.abcd1234.tmp"
    dead = d / "y.train.npy.999999999.abcd1234.tmp"
    live.write_bytes(b"0" * 10)
    dead.write_bytes(b"0" * 10)
    cache.prune(tmp_path, 0)
    assert live.exists() and not dead.exists()
