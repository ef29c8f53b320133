"""Writing ``prepare``'s outputs all or nothing: ``staging`` builds the new dataset, report.json,
documents.jsonl and funnel.png beside the old ones and swaps them in when whole; ``recover`` undoes
what a killed prepare left. Shared by the in-process and the Beam pipelines (through ``prepare.finish``)."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from lineage_jax.data.prepared import NAME
from lineage_jax.data.sources import _quiet_tfds

OUTPUTS = (NAME, "report.json", "documents.jsonl", "funnel.png")    # what prepare puts in --out; swapped in together


@contextlib.contextmanager
def staging(out: Path):
    """A fresh directory beside ``out``'s dataset to build the new one in; when the block ends without
    an error, its ``OUTPUTS`` replace ``out``'s (old ones renamed away, new ones renamed in, then the
    old deleted), so a failure or a kill mid-prepare leaves the old dataset whole and loadable."""
    out.mkdir(parents=True, exist_ok=True)
    recover(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".prepare-new-{os.getpid()}-", dir=out))
    try:
        yield tmp
        old = Path(tempfile.mkdtemp(prefix=".prepare-old-", dir=out))
        for name in OUTPUTS:
            if (out / name).exists():
                os.replace(out / name, old / name)
        for name in OUTPUTS:
            if (tmp / name).exists():                    # funnel.png only when plotted
                os.replace(tmp / name, out / name)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def recover(out: Path) -> None:
    """Undo what a killed prepare left in ``out``: an old dataset moved away but not yet replaced comes back;
    a half-built new one goes, unless the prepare building it (the pid in its name) is still running."""
    if not out.is_dir():
        return
    for stale in out.glob(".prepare-*"):
        if stale.name.startswith(".prepare-old-"):
            for name in OUTPUTS:
                if (stale / name).exists() and not (out / name).exists():
                    os.replace(stale / name, out / name)
        elif _alive(stale.name.split("-")[2]):
            continue
        shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write(out: Path, builder_cls, splits: dict, meta: dict) -> None:
    """Write the TFDS dataset quietly (no TFDS banner on stdout: ``--json`` prints there)."""
    with _quiet_tfds():
        builder = builder_cls(splits=splits, metadata=meta, data_dir=str(out), file_format="array_record")
        builder.download_and_prepare()
    shutil.rmtree(out / "downloads", ignore_errors=True)     # TFDS makes an empty downloads/ folder
