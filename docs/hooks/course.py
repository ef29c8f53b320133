"""MkDocs hook: the course pages show the project's own code and results, never copies.

Two directives, written as HTML comments so a page still reads as plain Markdown on GitHub:

``<!-- source: lineage_jax/foundations/mlp.py::backward -->``
    replaced by the source of ``backward`` (a function, a class, or ``Class.method``), read from the
    file with ``ast`` at build time, in a fenced block titled with the file and its line numbers; the
    decorators come with it. A missing file or name is a build error (``mkdocs build --strict`` fails),
    so a renamed function cannot leave a stale copy behind.
``<!-- source?: PATH::NAME -->``
    the same, but tolerant: while the module is not on this branch (a chapter other work is adding),
    the page shows a note saying so instead of failing the build.
``<!-- result: NAME -->``
    the lesson's committed result (``docs/results/NAME/result.json`` and its PNGs, written by
    ``lineage lesson NAME --out docs/results/NAME``): claim, verdict, the configuration it ran with,
    the measured rows and the figures, and the mode it ran in (``run.json``, written by
    ``docs/results/regenerate.py``). Without a committed result the page says how to produce one.

``extract`` and ``expand`` are plain functions so that tests/docs/ check them without MkDocs.
"""
from __future__ import annotations

import ast
import json
import logging
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
log = logging.getLogger("mkdocs.hooks.course")

DIRECTIVE = re.compile(r"^<!--\s*(source\??|result):\s*(\S+?)\s*-->\s*$", re.M)


class IncludeError(LookupError):
    """A ``source:`` directive names a file or definition that does not exist."""


def _find(body: list[ast.stmt], parts: list[str]) -> ast.AST | None:
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == parts[0]:
            if len(parts) == 1:
                return node
            return _find(node.body, parts[1:]) if isinstance(node, ast.ClassDef) else None
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and len(parts) == 1:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == parts[0] for t in targets):
                return node
    return None


def extract(path: str, name: str, root: Path = ROOT) -> tuple[str, int, int]:
    """(source text, first line, last line) of the top-level definition ``name`` (``Class.method``
    for a method) in ``root/path``, decorators included; IncludeError when either is missing."""
    file = root / path
    if not file.is_file():
        raise IncludeError(f"{path}: no such file")
    text = file.read_text()
    node = _find(ast.parse(text).body, name.split("."))
    if node is None:
        raise IncludeError(f"{path}: defines no {name!r}")
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    lines = text.splitlines()[first - 1:node.end_lineno]
    indent = min(len(s) - len(s.lstrip()) for s in lines if s.strip())
    return "\n".join(s[indent:] for s in lines), first, node.end_lineno


def source_block(spec: str, tolerant: bool, root: Path = ROOT) -> str:
    path, _, name = spec.partition("::")
    if not name:
        raise IncludeError(f"{spec}: write PATH::NAME (e.g. lineage_jax/optim/adam.py::adam)")
    try:
        code, first, last = extract(path, name, root)
    except IncludeError as e:
        if not tolerant:
            raise
        return (f'!!! note "Not on this branch yet"\n    `{name}` from `{path}` will be shown here once that '
                f"chapter is merged ({e}).\n")
    return f'```python title="{path} · {name} (lines {first}–{last})"\n{code}\n```\n'


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def result_block(name: str, page_dir: Path, docs: Path = DOCS) -> str:
    res_dir = docs / "results" / name
    file = res_dir / "result.json"
    if not file.is_file():
        return (f'!!! info "No committed result yet"\n    Run `python docs/results/regenerate.py {name}` (full mode) '
                f"and commit `docs/results/{name}/` to show the measured table and figures here.\n")
    res = json.loads(file.read_text())
    verdict = "**supported**" if res.get("supported") else "**not supported**"
    cfg = res.get("details", {}).get("config", {})
    run = json.loads((res_dir / "run.json").read_text()) if (res_dir / "run.json").is_file() else {}
    mode = run.get("mode", "unrecorded")
    out = [f"**Claim** ({res.get('paper', '')}): {res.get('claim', '')}", "",
           f"Verdict, computed from the rows below: {verdict}. Mode: **{mode}**"
           + (f" (`{run['command']}`, {run['seconds']} s)" if "command" in run else "")
           + f". Configuration as run: `{json.dumps(cfg, sort_keys=True)}`.", ""]
    rows = res.get("rows", [])
    if rows:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        out += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        out += ["| " + " | ".join(_cell(r.get(k, "")) for k in keys) + " |" for r in rows]
        out.append("")
    rel = Path(*[".."] * len(page_dir.parts)) if page_dir.parts else Path(".")
    for fig in res.get("figures", []):
        out += [f"![{name}: {fig}]({(rel / 'results' / name / fig).as_posix()})", ""]
    return "\n".join(out)


def expand(markdown: str, page_dir: Path = Path("."), root: Path = ROOT) -> str:
    """``markdown`` with every directive replaced (page_dir: the page's folder relative to docs/)."""
    def sub(m: re.Match) -> str:
        kind, arg = m.group(1), m.group(2)
        if kind == "result":
            return result_block(arg, page_dir, root / "docs")
        return source_block(arg, tolerant=kind.endswith("?"), root=root)
    return DIRECTIVE.sub(sub, markdown)


def on_page_markdown(markdown, page, config, files):
    try:
        return expand(markdown, Path(page.file.src_uri).parent)
    except IncludeError as e:
        log.warning(f"{page.file.src_uri}: {e}")   # a warning: --strict fails the build
        return markdown
