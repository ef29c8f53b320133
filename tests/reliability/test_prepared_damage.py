"""A damaged prepared dataset, file kind by file kind, is one ConfigError line naming the directory
and the command that rebuilds it (never a JSONDecodeError, a protobuf ParseError, a Riegeli
RuntimeError or a KeyError), both from the config check (metadata.json, before JAX) and from the
reader that training uses (``load_prepared``)."""
import shutil
from pathlib import Path

import pytest

from lineage_jax.config import ConfigError, DataConfig
from lineage_jax.data import load_prepared
from lineage_jax.data.pipeline import prepare as prep

EN = Path(__file__).resolve().parents[2] / "scripts" / "langid_text" / "en.txt"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    en = [s for s in EN.read_text(encoding="utf-8").splitlines() if s.strip()]
    (root / "docs").mkdir()
    for k in range(4):
        (root / "docs" / f"en{k}.txt").write_text(" ".join(en[6 * k:6 * k + 6]), encoding="utf-8")
    prep.prepare([str(root / "docs")], str(root / "ds"), prep.PrepareConfig(seq_len=32, eval_fraction=0.3))
    return root / "ds"


def _records(d: Path) -> Path:
    return next(d.glob("*-train.array_record-*"))


def _flip(f: Path) -> None:
    b = bytearray(f.read_bytes())
    b[200:400] = bytes(x ^ 0xFF for x in b[200:400])
    f.write_bytes(bytes(b))


DAMAGE = {   # name: (damage the version directory, caught already by the config check?)
    "metadata not JSON": (lambda d: (d / "metadata.json").write_text("{not json"), True),
    "metadata empty": (lambda d: (d / "metadata.json").write_text(""), True),
    "metadata without keys": (lambda d: (d / "metadata.json").write_text("{}"), True),
    "metadata a list": (lambda d: (d / "metadata.json").write_text("[1, 2]"), True),
    "dataset_info garbled": (lambda d: (d / "dataset_info.json").write_text("xx"), False),
    "features garbled": (lambda d: (d / "features.json").write_text("xx"), False),
    "records truncated": (lambda d: _records(d).write_bytes(_records(d).read_bytes()[:1000]), False),
    "records cut near the end": (lambda d: _records(d).write_bytes(_records(d).read_bytes()[:-5000]), False),
    "records bytes flipped": (lambda d: _flip(_records(d)), False),
    "records missing": (lambda d: _records(d).unlink(), False),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_prepared_dataset_is_one_line(kind, dataset, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    damage, by_config = DAMAGE[kind]
    damage(ds / "prepared_tokens" / "1.0.0")
    rebuild = f"lineage data prepare --out {ds} --overwrite"
    if by_config:
        with pytest.raises(ConfigError) as e:
            DataConfig(prepared_dir=str(ds)).prepared_meta()
        assert f"data.prepared_dir={ds}" in str(e.value) and rebuild in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_prepared(ds)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{ds}: the prepared dataset is damaged") and rebuild in msg
