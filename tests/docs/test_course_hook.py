"""docs/hooks/course.py: source includes come from the file itself and fail loudly when stale;
tolerant includes and missing lesson results leave a note instead; results render their rows."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("course_hook", ROOT / "docs" / "hooks" / "course.py")
hook = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hook)

SRC = '''import functools

X: int = 3


@functools.lru_cache
def f(a):
    """doc"""
    return a + 1


class C:
    def m(self):
        return 2
'''


@pytest.fixture
def root(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(SRC)
    return tmp_path


def test_extract_takes_the_definition_with_its_decorators_and_dedents_methods(root):
    code, first, last = hook.extract("pkg/mod.py", "f", root)
    assert code.splitlines()[0] == "@functools.lru_cache" and code.endswith("return a + 1")
    assert (first, last) == (6, 9)
    code, first, _ = hook.extract("pkg/mod.py", "C.m", root)
    assert code.startswith("def m(self):") and first == 13
    assert hook.extract("pkg/mod.py", "X", root)[0] == "X: int = 3"


def test_a_stale_include_is_an_error_and_a_tolerant_one_a_note(root):
    for spec in ("pkg/mod.py::g", "pkg/gone.py::f", "pkg/mod.py::C.n"):
        with pytest.raises(hook.IncludeError):
            hook.expand(f"<!-- source: {spec} -->\n", root=root)
        assert "Not on this branch yet" in hook.expand(f"<!-- source?: {spec} -->\n", root=root)
    out = hook.expand("text\n<!-- source: pkg/mod.py::f -->\nmore\n", root=root)
    assert '```python title="pkg/mod.py · f (lines 6–9)"' in out and "return a + 1" in out


def test_the_real_includes_name_real_functions():
    """Every non-tolerant include in docs/ resolves against this checkout (the build's check, without mkdocs)."""
    specs = [m.group(2) for page in (ROOT / "docs").rglob("*.md")
             for m in hook.DIRECTIVE.finditer(page.read_text()) if m.group(1) == "source"]
    assert len(specs) > 20
    for spec in specs:
        path, _, name = spec.partition("::")
        hook.extract(path, name)


def test_result_renders_claim_verdict_rows_and_figures(root):
    (root / "docs" / "results" / "demo").mkdir(parents=True)
    res = {"lesson": "demo", "paper": "P 2020", "claim": "it works", "supported": False,
           "rows": [{"a": 1, "b": 0.123456}, {"a": 2, "c": "x|y"}], "figures": ["demo.png"],
           "details": {"config": {"steps": 5}}}
    (root / "docs" / "results" / "demo" / "result.json").write_text(json.dumps(res))
    out = hook.expand("<!-- result: demo -->\n", page_dir=Path("course"), root=root)
    assert "**not supported**" in out and '{"steps": 5}' in out and "Mode: **unrecorded**" in out
    (root / "docs" / "results" / "demo" / "run.json").write_text(
        json.dumps({"mode": "quick", "command": "lineage lesson demo --quick", "seconds": 3.0}))
    out = hook.expand("<!-- result: demo -->\n", page_dir=Path("course"), root=root)
    assert "Mode: **quick** (`lineage lesson demo --quick`, 3.0 s)" in out
    assert "| a | b | c |" in out and "| 1 | 0.1235 |  |" in out and "x\\|y" in out
    assert "![demo: demo.png](../results/demo/demo.png)" in out
    assert "No committed result yet" in hook.expand("<!-- result: other -->\n", root=root)


def test_every_test_the_course_cites_exists():
    """`tests/x.py::test_name` on a course page names a real test function (a renamed test fails here)."""
    import ast
    import re
    cited = {m for page in (ROOT / "docs" / "course").glob("*.md")
             for m in re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", page.read_text())}
    assert len(cited) > 30
    missing = []
    for path, name in cited:
        file = ROOT / path
        if not file.is_file():
            missing.append(path)
        elif name and name not in {n.name for n in ast.parse(file.read_text()).body if isinstance(n, ast.FunctionDef)}:
            missing.append(f"{path}::{name}")
    assert missing == []
