"""Fenced code blocks of the Markdown docs, for the tests that run them.

A block is ```` ```LANG ```` … ```` ``` ```` at any indent (so blocks inside admonitions and collapsible
solutions count), its body dedented by the fence's indent. A block whose preceding non-blank line is
``<!-- illustrative -->`` is marked skip: an exercise skeleton or code that is meant to fail.
"""
from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

FENCE = re.compile(r"^(\s*)(`{3,})\s*([\w+-]*)[^`]*$")
SKIP_MARK = "<!-- illustrative -->"


@dataclasses.dataclass(frozen=True)
class Block:
    path: Path
    line: int           # 1-based line of the opening fence
    lang: str
    code: str
    skip: bool


def blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, ticks, lang = m.group(1), m.group(2), m.group(3).lower()
        prev = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        body, j = [], i + 1
        while j < len(lines) and not re.match(rf"^\s*{ticks}\s*$", lines[j]):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        if j == len(lines):
            raise ValueError(f"{path}:{i + 1}: code fence never closed")
        out.append(Block(path, i + 1, lang, "\n".join(body) + "\n", prev == SKIP_MARK))
        i = j + 1
    return out


SHELL = {"bash", "sh", "shell", "console"}


def _synopsis_word(w: str) -> str | None:
    """A usage-synopsis word as a concrete argument: ``[--devices`` -> ``--devices``, ``greedy|sample`` ->
    ``greedy``, a placeholder ``N`` / ``DIR`` -> ``1``, ``...`` dropped (the README writes synopses)."""
    if w in {"&&", "||", ";", "|"}:
        return w
    w = w.strip("[]")
    if w in {"", "...", "…"}:
        return None
    w = w.split("|")[0] if "|" in w else w
    return "1" if re.fullmatch(r"[A-Z][A-Z0-9_]*", w) else w


def lineage_commands(block: Block) -> list[list[str]]:
    """The argv (after ``lineage``) of every command in a shell block that runs ``lineage``: lines joined
    over trailing backslashes, ``$ `` prompts dropped, split on ``&&``, ``||``, ``;`` and ``|``; synopsis
    notation (optional ``[...]``, ``a|b`` alternatives, upper-case placeholders) made concrete."""
    text = re.sub(r"\\\n", " ", block.code)
    cmds = []
    for line in text.splitlines():
        line = line.strip().removeprefix("$ ")
        try:
            words = shlex.split(line, comments=True)
        except ValueError as e:
            raise ValueError(f"{block.path}:{block.line}: {line!r}: {e}") from None
        cmd: list[str] = []
        for w in [*map(_synopsis_word, words), ";"]:
            if w is None:
                continue
            if w in {"&&", "||", ";", "|"}:
                if cmd and Path(cmd[0]).name == "lineage":
                    cmds.append(cmd[1:])
                cmd = []
            else:
                cmd.append(w)
    return cmds
