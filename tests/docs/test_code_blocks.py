"""Every code block in the docs works: each page's Python blocks run in order in one namespace (a reader
following the page top to bottom), except blocks marked ``<!-- illustrative -->``; every ``lineage``
command in a shell block parses with the CLI's own parser (each subcommand and flag exists)."""
from pathlib import Path

import pytest

from tests.docs.blocks import SHELL, blocks, lineage_commands

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted((ROOT / "docs").rglob("*.md"))
PY_PAGES = [p for p in PAGES if any(b.lang in {"python", "py"} and not b.skip for b in blocks(p))]


@pytest.mark.parametrize("page", PY_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run_in_order(page, capsys):
    namespace = {"__name__": "__docs__"}
    for block in blocks(page):
        if block.lang not in {"python", "py"} or block.skip:
            continue
        code = compile(block.code, f"{page.relative_to(ROOT)}:{block.line}", "exec")
        exec(code, namespace)  # noqa: S102 - the docs' own examples


def test_the_guide_is_executed_and_has_checked_exercises():
    assert ROOT / "docs" / "fp_guide.md" in PY_PAGES
    guide = blocks(ROOT / "docs" / "fp_guide.md")
    run = [b for b in guide if b.lang == "python" and not b.skip]
    assert len(run) >= 15 and sum(b.skip for b in guide) >= 2
    assert sum("assert" in b.code for b in run) >= 12          # the blocks check what they claim
    text = (ROOT / "docs" / "fp_guide.md").read_text().splitlines()
    exercises_at = text.index("## Exercises") + 1
    solutions = [b for b in run if b.line > exercises_at]
    assert len(solutions) >= 4 and all("assert" in b.code for b in solutions)   # each solution checks itself


def _all_commands():
    return [(b, argv) for p in PAGES + [ROOT / "README.md"] for b in blocks(p) if b.lang in SHELL
            for argv in lineage_commands(b)]


def test_every_lineage_command_in_the_docs_parses():
    from lineage_jax import cli
    commands = _all_commands()
    assert len(commands) > 30
    parser = cli.build_parser()
    bad = []
    for block, argv in commands:
        try:
            cli.parse_args(parser, argv)
        except SystemExit:
            bad.append(f"{block.path.relative_to(ROOT)}:{block.line}: lineage {' '.join(argv)}")
    assert bad == []


def test_extractor_marks_skips_dedents_and_splits_chains(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("<!-- illustrative -->\n```python\n1/0\n```\n\n??? tip\n    ```python\n    x = 1\n    ```\n"
                    "```bash\n$ lineage train \\\n  train.steps=2 && lineage sample --run-dir r | head  # c\n"
                    "python -m pytest\n```\n")
    b = blocks(page)
    assert [(x.lang, x.skip) for x in b] == [("python", True), ("python", False), ("bash", False)]
    assert b[1].code == "x = 1\n"
    assert lineage_commands(b[2]) == [["train", "train.steps=2"], ["sample", "--run-dir", "r"]]
    bad = tmp_path / "bad.md"
    bad.write_text("```python\nx = 1\n")
    with pytest.raises(ValueError, match="never closed"):
        blocks(bad)
