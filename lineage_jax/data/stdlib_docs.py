"""``stdlib_docs``: a TFDS dataset of the docstrings of the Python standard library.

Text that ships with every Python install, so the project trains offline out of the box.
Each document is one module: its docstring, then every class and function docstring
under a one-line header with the qualified name and signature. Modules are found by
parsing (``ast``, never importing) the ``.py`` files under ``sysconfig``'s stdlib path,
in sorted order; tests, ``site-packages`` and non-module paths are skipped. About 5% of
the modules, chosen by a stable hash of the module name, form the ``validation`` split.

The stdlib differs between Python versions, so the builder config is named after the
running version (``py3_11``). It is written as ``array_record`` and read back with
``as_data_source``: no TensorFlow is needed to prepare or read it.
"""
from __future__ import annotations

import ast
import hashlib
import os
import sys
import sysconfig
import warnings
from pathlib import Path
from typing import Iterator

import tensorflow_datasets as tfds

VALIDATION_FRACTION = 0.05
# Directory names never descended into: installed packages, test suites, caches.
SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
PY_CONFIG = f"py{sys.version_info.major}_{sys.version_info.minor}"


def stable_unit_hash(key: str) -> float:
    """A number in [0, 1) fixed by ``key`` alone: the same on every run, machine and Python."""
    digest = hashlib.sha256(key.encode("utf-8", errors="surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_validation(module: str) -> bool:
    """Whether a module belongs to the ``validation`` split (about 5% of modules)."""
    return stable_unit_hash(module) < VALIDATION_FRACTION


def stdlib_dir() -> Path:
    """The directory holding the running interpreter's pure-Python standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def module_files(root: Path | None = None) -> list[tuple[str, Path]]:
    """``(module name, path)`` of every stdlib module file, sorted by path; tests skipped."""
    root = stdlib_dir() if root is None else root
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and d.isidentifier()]
        for name in filenames:
            if not name.endswith(".py") or name.startswith("test_"):
                continue
            path = Path(dirpath, name)
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if parts and all(p.isidentifier() for p in parts):
                found.append((".".join(parts), path))
    return sorted(found, key=lambda mp: mp[1].relative_to(root).as_posix())


def module_document(module: str, source: bytes) -> str:
    """One module's docstrings as text: the module docstring, then each def/class's; "" if none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences in old stdlib code
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            return ""
    parts = []
    doc = ast.get_docstring(tree)
    if doc:
        parts.append(f"# module {module}\n\n{doc}")
    _collect(tree.body, module, parts)
    if parts and not doc:
        parts.insert(0, f"# module {module}")
    return "\n\n".join(parts) + "\n" if parts else ""


def _collect(body: list[ast.stmt], prefix: str, parts: list[str]) -> None:
    """Append a header + docstring for each class/function in ``body``, recursing into classes."""
    for node in body:
        if isinstance(node, ast.ClassDef):
            bases = ", ".join(ast.unparse(b) for b in node.bases)
            header = f"class {prefix}.{node.name}" + (f"({bases})" if bases else "")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            kind = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
            header = f"{kind} {prefix}.{node.name}({ast.unparse(node.args)})"
        else:
            continue
        doc = ast.get_docstring(node)
        if doc:
            parts.append(f"## {header}\n\n{doc}")
        if isinstance(node, ast.ClassDef):
            _collect(node.body, f"{prefix}.{node.name}", parts)


class StdlibDocs(tfds.core.GeneratorBasedBuilder):
    """Docstrings of the running Python's standard library, one document per module."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Module, class and function docstrings; 5% validation by module-name hash."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(
            name=PY_CONFIG,
            description=f"Python {sys.version.split()[0]} standard library ({stdlib_dir()})."),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=(f"Docstrings of the Python {sys.version.split()[0]} standard library, parsed with ast "
                         "(never imported): one document per module, module docstring first, then each class "
                         "and function docstring under its qualified name and signature."),
            features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "module": tfds.features.Text()}),
            disable_shuffling=True,  # keep the sorted-path order
            homepage="https://docs.python.org/3/library/",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {"train": self._generate_examples(validation=False),
                "validation": self._generate_examples(validation=True)}

    def _generate_examples(self, validation: bool) -> Iterator[tuple[str, dict[str, str]]]:
        for module, path in module_files():
            if is_validation(module) != validation:
                continue
            text = module_document(module, path.read_bytes())
            if text:
                yield module, {"text": text, "module": module}
