"""Regenerate the lesson results the course pages show: ``python docs/results/regenerate.py [NAME ...]
[--quick]``.

Each lesson runs through the CLI (``lineage lesson NAME [--quick] --out docs/results/NAME``) and a sidecar
``run.json`` records the mode and command, which the page prints beside the figure, so a caption never
claims a full run for a smoke run. Without names: every registered lesson. Full mode takes up to ~5 minutes a
lesson on 2 CPU cores; commit ``docs/results/`` afterwards.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    names = [a for a in argv if not a.startswith("-")]
    if not names:
        sys.path.insert(0, str(ROOT))
        from lineage_jax.lessons.registry import LESSONS
        names = list(LESSONS)
    for name in names:
        out = ROOT / "docs" / "results" / name
        tmp = out.with_name(name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = ["lineage", "lesson", name, *(["--quick"] if quick else []), "--no-progress", "--out", str(tmp)]
        start = time.time()
        proc = subprocess.run([sys.executable, "-m", "lineage_jax", *cmd[1:]], cwd=ROOT)
        if proc.returncode != 0:
            print(f"{name}: failed (exit {proc.returncode}); kept the previous result", file=sys.stderr)
            shutil.rmtree(tmp, ignore_errors=True)
            continue
        (tmp / "run.json").write_text(json.dumps({
            "mode": "quick" if quick else "full",
            "command": " ".join(c if c != str(tmp) else f"docs/results/{name}" for c in cmd),
            "seconds": round(time.time() - start, 1)}, indent=1) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)                                   # the page never sees half a result
        print(f"{name}: {out.relative_to(ROOT)} ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
