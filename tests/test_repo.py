"""House rules that a reader relies on: CI runs the README's command; layers stay apart."""
import ast
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


# Each package of lineage_jax may import only packages on a strictly lower row (and itself).
# A new chapter's package takes a row here; an import that points up or sideways fails.
LAYERS = [
    {"config"},                                  # schema and validation: imports no other package
    {"nn", "optim", "runs",                      # building blocks, optimisers, run directories (atomic writes),
     "diffusion"},                               # diffusion schedules and samplers (pure functions)
    {"tokenize", "adapt", "foundations"},        # tokenizers (save through runs.atomic) |
                                                 # LoRA / NF4 / QLoRA: pure transforms of parameter trees |
                                                 # the pre-Transformer pieces (hand backprop, tape AD, BN, dropout,
                                                 # LSTMs; their nets as linen modules named through nn.hooks)
    {"attention", "data"},
    {"moe"},
    {"models"},
    {"decode", "vision"},                        # sampling a model: never builds an optimiser | ViT, U-Net
    {"train", "reasoning", "imagegen"},          # the pure step, its state, the loop |
                                                 # ICL/induction heads, scratchpads, GRPO on an arithmetic world |
                                                 # digit diffusion: runs, sampling, the judge, latent space
    {"interop", "scaling", "align", "clip"},     # Hugging Face checkpoints in and out (writes run dirs) |
                                                 # scaling laws: counts, fits, the IsoFLOP sweep (drives train) |
                                                 # alignment: SFT, reward model, PPO, DPO (steps over train/) | CLIP
    {"lessons", "bench"},
    {"commands"},                                # one module per CLI subcommand
    {"cli"},
    {"__main__"},
]
LAYER = {name: row for row, names in enumerate(LAYERS) for name in names}
MAY_IMPORT_PARALLEL = LAYER["train"]             # models and everything below stay mesh-agnostic


def imports(path: Path):
    """Every absolute import in a file, at any depth (inside functions too), as module names."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "lineage_jax":   # from lineage_jax import models, decode
                yield from (f"lineage_jax.{a.name}" for a in node.names)
            else:
                yield node.module


def package_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "parallel":
        return "parallel"
    return parts[1] if parts[0] == "lineage_jax" and len(parts) > 1 else None


def layering_violations(root: Path) -> list[str]:
    bad = []
    for path in sorted((root / "lineage_jax").rglob("*.py")):
        rel = path.relative_to(root / "lineage_jax")
        if rel == Path("__init__.py"):
            continue
        src = rel.parts[0].removesuffix(".py")
        if src not in LAYER:
            bad.append(f"{rel}: package {src!r} has no row in LAYERS")
            continue
        for module in imports(path):
            dst = package_of(module)
            if dst is None or dst == src:
                continue
            if dst == "parallel":
                if LAYER[src] < MAY_IMPORT_PARALLEL:
                    bad.append(f"{rel}: {src} imports {module} (parallel/ is for train and above)")
            elif dst not in LAYER:
                bad.append(f"{rel}: imports {module}, whose package has no row in LAYERS")
            elif LAYER[dst] >= LAYER[src]:
                bad.append(f"{rel}: {src} (row {LAYER[src]}) imports {module} (row {LAYER[dst]})")
    return bad


def test_packages_import_only_lower_layers():
    assert layering_violations(ROOT) == []


def test_layering_check_sees_imports_inside_functions(tmp_path):
    """The check is not fooled by a back-arrow hidden in a function body."""
    (tmp_path / "lineage_jax" / "nn").mkdir(parents=True)
    (tmp_path / "lineage_jax" / "nn" / "x.py").write_text(
        "import jax\n\n\ndef f():\n    from lineage_jax.models import gpt\n    return gpt\n")
    (tmp_path / "lineage_jax" / "newthing.py").write_text("from lineage_jax import nn\n")
    assert layering_violations(tmp_path) == [
        "newthing.py: package 'newthing' has no row in LAYERS",
        f"nn/x.py: nn (row 1) imports lineage_jax.models (row {LAYER['models']})"]


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


def test_every_package_directory_is_a_regular_package():
    """An installed (non-editable or editable) copy finds only packages with an __init__.py."""
    dirs = [d for top in ("lineage_jax", "parallel") for d in [ROOT / top, *(ROOT / top).rglob("*")]
            if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))]
    assert [str(d.relative_to(ROOT)) for d in dirs if not (d / "__init__.py").is_file()] == []
