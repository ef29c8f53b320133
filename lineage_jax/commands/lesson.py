"""``lineage lesson``: list the lessons, or run one (``lineage_jax/lessons/registry.py`` names them).

    lineage lesson [--json]                                  every lesson: name, era, paper, claim
    lineage lesson translate [--quick] [--out DIR] [key=value ...]
    lineage lesson translate --task dates --steps 500        a lesson's flags: its registry `flags`

A run writes ``DIR/result.json`` (lesson, paper, claim, supported, rows, figures, details) and its
PNGs into ``--out`` (default ``runs/lesson-NAME``), then prints the rows and the verdict (``--json``:
the result object). Names, flags, overrides and ``--out`` are checked before the lesson's module
(and JAX) is imported.
"""
from __future__ import annotations

import argparse
import json
import os

from lineage_jax.config import ConfigError
from lineage_jax.lessons import harness, registry


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="the lesson's smoke run (at most 30 s on 2 CPU cores)")
    p.add_argument("--out", default=None, metavar="DIR", help="where result.json and the PNGs go "
                                                               "(default: runs/lesson-NAME)")
    p.add_argument("--json", action="store_true", help="print JSON (the list, or the result) instead of text")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    owners: dict[str, list[str]] = {}
    for lesson in registry.LESSONS.values():
        for field in lesson.flags:
            owners.setdefault(field, []).append(lesson.name)
    for field, names in owners.items():
        p.add_argument(_flag(field), dest=f"flag_{field}", default=None, metavar="V",
                       help=f"{field}=V, for lesson {', '.join(names)}")


def register(subparsers) -> None:
    p = subparsers.add_parser("lesson", help="the lessons: list them, or run one (lineage lesson NAME)",
                              description="key=value overrides set fields of the lesson's Config")
    p.add_argument("name", nargs="?", default=None, metavar="NAME", help=f"one of: {', '.join(registry.LESSONS)}")
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="key=value", help="overrides and flags")
    _add_options(p)
    p.set_defaults(func=cmd_lesson)


def _listing(as_json: bool) -> str:
    rows = [lesson.metadata() for lesson in registry.LESSONS.values()]
    return json.dumps(rows, indent=1) if as_json else harness.table(rows)


def cmd_lesson(args) -> int:
    if args.name is None:
        print(_listing(args.json))
        return 0
    lesson = registry.get(args.name)
    inner = argparse.ArgumentParser(prog=f"lineage lesson {lesson.name}")   # options after NAME, mixed with k=v
    _add_options(inner)
    inner.add_argument("overrides", nargs="*", metavar="key=value")
    inner.parse_intermixed_args(args.rest, namespace=args)
    out = args.out or f"runs/lesson-{lesson.name}"
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out={out}: is a file; give a directory (it holds result.json and the PNGs)")
    flags = {f: v for f, v in vars(args).items() if f.startswith("flag_") and v is not None}
    foreign = [_flag(f.removeprefix("flag_")) for f in flags if f.removeprefix("flag_") not in lesson.flags]
    if foreign:
        raise ConfigError(f"{', '.join(foreign)}: not a flag of lesson {lesson.name}; use key=value "
                          f"(its flags: {', '.join(map(_flag, lesson.flags)) or 'none'})")

    mod = registry.load(lesson.name)
    values = {**{f.removeprefix("flag_"): v for f, v in flags.items()},
              **harness.parse_overrides(args.overrides, mod.Config)}
    cfg = harness.configure(mod.Config, values, quick=mod.QUICK if args.quick else None,
                            spelling={f: _flag(f) for f in lesson.flags if f"flag_{f}" in flags})
    res = mod.run(cfg, out, progress=not args.no_progress and not args.json)
    path = harness.save(res, out)
    if args.json:
        print(json.dumps(res.to_json()))
        return 0
    print(f"{lesson.name} ({lesson.era}): {lesson.paper}")
    print(harness.table(res.rows))
    for line in getattr(mod, "report", lambda r: [])(res):
        print(line)
    print(f"claim: {res.claim}\n-> {'supported' if res.supported else 'NOT supported'} by this run")
    print(f"result: {path}; figures: {', '.join(os.path.join(out, f) for f in res.figures) or 'none'}")
    return 0
