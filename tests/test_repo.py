"""House rules that a reader relies on: CI runs the README's command; layers stay apart."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    return re.findall(r"```bash\n(python3 -m venv[^\n]*)\n```", (ROOT / "README.md").read_text())


def test_ci_runs_the_readme_test_command():
    commands = readme_commands()
    assert len(commands) == 2, commands
    assert "pytest" in commands[1] and "lineage train" in commands[0]
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()


def test_models_and_parallel_do_not_import_each_other():
    import_re = re.compile(r"^\s*(from|import)\s+(\w+)", re.M)
    for path in (ROOT / "parallel").rglob("*.py"):
        assert "lineage_jax" not in {m[1] for m in import_re.findall(path.read_text())}, path
    for path in (ROOT / "lineage_jax" / "models").rglob("*.py"):
        assert "parallel" not in {m[1] for m in import_re.findall(path.read_text())}, path


def test_lineage_index_points_at_real_files():
    text = (ROOT / "docs" / "lineage.md").read_text()
    paths = set(re.findall(r"`((?:lineage_jax|parallel|tests)/[\w/]+\.py)", text))
    assert len(paths) > 10
    missing = [p for p in paths if not (ROOT / p).is_file()]
    assert not missing, missing
