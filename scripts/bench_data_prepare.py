"""Throughput of ``lineage data prepare``: the in-process path vs Apache Beam's direct runner with 1
and 2 workers, on a generated corpus (documents of 5-9 English sentences drawn at random, 10 % exact copies, 10 %
near-duplicate edits), documents per second each. A benchmark, not a test: run it once on a quiet
machine (``nice python scripts/bench_data_prepare.py --docs 100000 --out bench_data``); it writes
``bench.json`` and ``bench.png`` to --out and checks that every runner's dataset is row for row
the in-process one. ``direct1`` runs the workers' code in this process (in memory); ``direct1mp`` and
``direct2`` in worker processes (``direct_running_mode=multi_processing``), so direct1mp → direct2 is
the scaling from 1 to 2 workers. Dataflow and Flink runs take the same pipeline with other options (docs/course/03_tokenization_data.md)."""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from lineage_jax.data.pipeline import prepare as prep  # noqa: E402
from lineage_jax.data.prepared import read_prepared  # noqa: E402


def generate(root: Path, n_docs: int, files: int = 16, seed: int = 0) -> None:
    en = (Path(__file__).parent / "langid_text" / "en.txt").read_text(encoding="utf-8").splitlines()
    sentences = [s for s in en if s.strip()]
    rng = random.Random(seed)
    docs = []
    while len(docs) < n_docs:
        r = rng.random()
        if docs and r < 0.1:
            docs.append(rng.choice(docs).upper())                                # exact (normalised) copy
        elif docs and r < 0.2:
            words = rng.choice(docs).split()
            words[rng.randrange(len(words))] = "sideways"                        # a near duplicate
            docs.append(" ".join(words))
        else:
            docs.append(" ".join(rng.sample(sentences, rng.randint(5, 9))))
    root.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        with open(root / f"part{f:03d}.jsonl", "w", encoding="utf-8") as out:
            out.writelines(json.dumps({"text": d}) + "\n" for d in docs[f::files])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--out", default="bench_data")
    ap.add_argument("--runs", default="in_process,direct1,direct1mp,direct2",
                    help="in_process; directN: N workers (1: in memory, N > 1: processes); direct1mp: 1 worker process")
    args = ap.parse_args(argv)
    out = Path(args.out)
    corpus = out / "corpus"
    if not corpus.exists():
        generate(corpus, args.docs)
    cfg = prep.PrepareConfig(seq_len=256, overwrite=True, plot=False)
    results, ref = [], None
    for run in args.runs.split(","):
        target = out / run
        t = time.perf_counter()
        if run == "in_process":
            report = prep.prepare([str(corpus)], str(target), cfg)
        else:
            from lineage_jax.data.pipeline.beam_prepare import prepare_beam
            workers, mp = int(run[len("direct"):].removesuffix("mp")), run.endswith("mp")
            report = prepare_beam([str(corpus)], str(target), cfg, workers=workers,
                                  beam_args=["--direct_running_mode=multi_processing"] if mp else [])
        wall = time.perf_counter() - t
        rows, _ = read_prepared(target)
        ref = ref or rows
        same = all(np.array_equal(ref[s][k], rows[s][k]) for s in ref for k in ref[s])
        results.append({"run": run, "mode": "in_process" if run == "in_process" else
                        ("multi_processing" if run.endswith("mp") or run != "direct1" else "in_memory"), "docs": report["input_docs"], "kept": report["output_docs"],
                        "seconds": round(wall, 1), "docs_per_s": round(report["input_docs"] / wall, 1),
                        "workers": report["throughput"]["workers"], "rows_equal_in_process": same,
                        "removed": report["removed"]})
        print(json.dumps(results[-1]), flush=True)
        shutil.rmtree(target / "prepared_tokens", ignore_errors=True)
    (out / "bench.json").write_text(json.dumps(results, indent=1) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar([r["run"] for r in results], [r["docs_per_s"] for r in results], color="#4c72b0")
    for k, r in enumerate(results):
        ax.text(k, r["docs_per_s"], f"{r['docs_per_s']:,.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("documents / s")
    ax.set_title(f"lineage data prepare, {results[0]['docs']:,} generated documents", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "bench.png", dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
