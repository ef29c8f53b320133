"""What every lesson shares: config overrides, the training loop, the result, its JSON and its figures.

A lesson computes; this module turns ``field=value`` strings into its frozen Config, runs its pure
``train_step(state, batch) -> (state, metrics)`` under a progress bar, and writes ``result.json``
and PNGs (matplotlib, Agg). Importing it imports no JAX (the CLI validates before anything compiles).
"""
from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from lineage_jax.config import ConfigError
from lineage_jax.lessons.registry import get


# --------------------------------------------------------------------------- config

def parse_overrides(items: Iterable[str], cls) -> dict[str, str]:
    """``["steps=200", "task=dates"]`` -> ``{"steps": "200", "task": "dates"}``; unknown keys refused."""
    fields = [f.name for f in dataclasses.fields(cls)]
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"override {item!r} must look like key=value; allowed keys: {', '.join(fields)}")
        if key not in fields:
            raise ConfigError(f"unknown key {key!r}; allowed: {', '.join(fields)}")
        out[key] = value
    return out


def _coerce(name: str, raw: str, typ) -> Any:
    kinds = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if typ not in kinds:
        raise TypeError(f"{name}: a lesson's Config fields are bool, int, float or str, not {typ}")
    if typ is bool:
        if raw.lower() in ("true", "1", "false", "0"):
            return raw.lower() in ("true", "1")
    else:
        try:
            return typ(raw)
        except ValueError:
            pass
    raise ConfigError(f"{name}={raw}: expected {kinds[typ]}")


def at_least_one(cfg, *fields: str) -> None:
    """A lesson config's integer ``fields`` (sizes, step counts) are each >= 1, or one line naming the first
    that is not."""
    for f in fields:
        if getattr(cfg, f) < 1:
            raise ConfigError(f"{f}={getattr(cfg, f)}: must be at least 1")


def positive_list(field: str, raw: str, kind: type, example: str) -> list:
    """``"1,2,8"`` -> ``[1, 2, 8]`` (``kind`` int or float), every value > 0; else ConfigError naming ``field``."""
    try:
        values = [kind(v) for v in raw.split(",")]
    except ValueError:
        values = []
    if not values or not all(v > 0 for v in values):
        what = "batch sizes >= 1" if kind is int else "positive numbers"
        raise ConfigError(f"{field}={raw}: comma-separated {what}, e.g. {example}")
    return values


def configure(cls, values: Mapping[str, str], quick: Mapping[str, Any] | None = None,
              spelling: Mapping[str, str] | None = None):
    """``cls(**quick, **typed values)``: each raw string coerced to its field's type.

    ``spelling`` names how the user wrote a field (``{"d_model": "--d-model"}``), so an error reads
    ``--d-model=12: ...`` rather than ``d_model=12: ...`` (Config errors start with ``field=``).
    """
    hints, spelling = typing.get_type_hints(cls), spelling or {}
    typed = {k: _coerce(spelling.get(k, k), v, hints[k]) for k, v in values.items()}
    try:
        return cls(**{**(quick or {}), **typed})
    except ConfigError as e:
        message = str(e)
        for field, spelt in spelling.items():
            if message.startswith(f"{field}="):
                raise ConfigError(spelt + message[len(field):]) from None
        raise


# --------------------------------------------------------------------------- the loop

def fit(train_step: Callable, state, batch_at: Callable[[int], Any], steps: int, *, log_every: int = 10,
        evaluate: Callable[[Any, int], dict] | None = None, eval_at: Iterable[int] = (), progress: bool = True,
        desc: str = "") -> tuple[Any, list[dict], list[dict]]:
    """Steps 1 … ``steps`` of ``state, metrics = train_step(state, batch_at(step))``.

    Returns (state, history, evals): history holds the metrics as floats at step 1, every
    ``log_every`` steps and the last; evals holds ``evaluate(state, step)`` at the ``eval_at`` steps.
    """
    from tqdm.auto import tqdm
    eval_at, history, evals = set(eval_at), [], []
    bar = tqdm(total=steps, disable=not progress, unit="step", dynamic_ncols=True, desc=desc)
    for step in range(1, steps + 1):
        state, metrics = train_step(state, batch_at(step))
        if step == 1 or step % log_every == 0 or step == steps:
            history.append({"step": step, **{k: float(v) for k, v in metrics.items()}})
        if step in eval_at:
            evals.append({"step": step, **evaluate(state, step)})
        if step in eval_at or history[-1]["step"] == step:
            shown = {**history[-1], **(evals[-1] if evals else {})}
            bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items() if k != "step" and isinstance(v, float)})
        bar.update(1)
    bar.close()
    return state, history, evals


# --------------------------------------------------------------------------- the result

@dataclasses.dataclass(frozen=True)
class LessonResult:
    lesson: str
    paper: str
    claim: str
    supported: bool          # supports(rows): read off the measurement
    rows: list[dict]         # the measured table
    figures: list[str]       # PNG paths relative to the output directory
    details: dict            # anything else worth keeping (config, examples, timings)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def result(name: str, rows: list[dict], supports: Callable[[list[dict]], bool], figures: Iterable[str] = (),
           **details) -> LessonResult:
    """The lesson's result; ``supported`` is ``supports(rows)``, so it can only follow the measured rows."""
    meta = get(name)
    return LessonResult(lesson=name, paper=meta.paper, claim=meta.claim, supported=bool(supports(rows)),
                        rows=list(rows), figures=list(figures), details=details)


def save(res: LessonResult, out_dir: str | Path) -> Path:
    """Writes ``out_dir/result.json``; returns its path."""
    path = Path(out_dir) / "result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res.to_json(), indent=1), encoding="utf-8")
    return path


def figure(out_dir: str | Path, filename: str, draw: Callable, panels: int = 1, title: str = "",
           panel_size: tuple[float, float] = (5.0, 4.0)) -> str:
    """``draw(axes)`` (one Axes, or a list of ``panels``) into ``out_dir/filename``; returns ``filename``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, panels, figsize=(panel_size[0] * panels, panel_size[1]))
    draw(list(axes) if panels > 1 else axes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(Path(out_dir) / filename, dpi=100)
    plt.close(fig)
    return filename


def table(rows: list[dict]) -> str:
    """The rows as an aligned text table (floats to 4 significant digits)."""
    if not rows:
        return "(no rows)"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    cells = [cols] + [[cell(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cols))]
    return "\n".join("  ".join(s.ljust(w) for s, w in zip(line, widths)).rstrip() for line in cells)
