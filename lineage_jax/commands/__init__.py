"""Subcommands of ``lineage`` that live beside the code they drive.

Each module listed in ``COMMANDS`` exposes ``register(subparsers)``, adding its parser(s) with
``set_defaults(func=handler)``; a handler takes the parsed arguments and returns an exit code.
Modules must not import JAX at import time (``--devices`` must act before JAX starts); raise
``lineage_jax.config.ConfigError`` for a user's mistake (one line, exit 2).

``lineage bench TARGET``: each module in ``BENCH_TARGETS`` exposes ``run(args) -> dict`` (args:
the parsed ``bench`` arguments: config, overrides, steps, json, out, quick) and
``report(result) -> str``. ``train`` is the train-step benchmark in ``lineage_jax.bench``.
"""
COMMANDS: tuple[str, ...] = (
    "lineage_jax.commands.lesson",
    "lineage_jax.commands.data",
    "lineage_jax.commands.tokenizer",
    "lineage_jax.commands.cache",
    "lineage_jax.commands.launch",
    "lineage_jax.commands.scaling",
    "lineage_jax.commands.finetune",
    "lineage_jax.commands.plan",
    "lineage_jax.commands.align",
    "lineage_jax.commands.diffusion",
    "lineage_jax.commands.clip",
)

BENCH_TARGETS: dict[str, str] = {
    "train": "lineage_jax.bench",
    "moe": "lineage_jax.bench.moe",
    "decode": "lineage_jax.bench.decode",
    "attention": "lineage_jax.bench.attention",
    "tokenizer": "lineage_jax.bench.tokenizer",
    "gemm": "lineage_jax.bench.gemm",
    "input": "lineage_jax.bench.input",
}
