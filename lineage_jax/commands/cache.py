"""``lineage cache list`` / ``lineage cache clear``: the token caches training keeps.

``load_splits`` tokenizes a text source once and caches the streams under the data dir
(``data.data_dir``, else ``$TFDS_DATA_DIR``, else ``~/.cache/lineage_jax/tfds``), one pair of
``.npy`` files per (source, tokenizer, split settings); nothing deletes them on its own.
``list`` shows each with its size and last use; ``clear`` deletes them all, or with
``--max-size`` only the least recently used until the rest fit. A deleted cache is simply
rebuilt when next needed. The prepared corpora (``stdlib_docs``, TFDS datasets) are not touched.
No JAX here.
"""
from __future__ import annotations

import json
import re

from lineage_jax.config import ConfigError

_UNITS = {"": 1, "B": 1, "K": 2 ** 10, "KB": 2 ** 10, "M": 2 ** 20, "MB": 2 ** 20, "G": 2 ** 30, "GB": 2 ** 30}


def register(subparsers) -> None:
    p = subparsers.add_parser("cache", help="the token caches under the data dir: list them, or clear them")
    sub = p.add_subparsers(dest="cache_command", required=True)
    for name, text in (("list", "each token cache with its size and last use"),
                       ("clear", "delete token caches (all, or the least recently used beyond --max-size)")):
        q = sub.add_parser(name, help=text)
        q.add_argument("--data-dir", default=None, metavar="DIR",
                       help="the data dir (default: $TFDS_DATA_DIR, else ~/.cache/lineage_jax/tfds)")
        q.add_argument("--json", action="store_true", help="print one JSON object")
        q.set_defaults(func=cmd_list if name == "list" else cmd_clear)
        if name == "clear":
            q.add_argument("--max-size", default=None, metavar="SIZE",
                           help="keep the most recently used caches up to SIZE (e.g. 500MB, 2GB); default: keep none")


def parse_size(raw: str) -> int:
    """``500MB`` -> bytes (B, K/KB, M/MB, G/GB; powers of 1024); ConfigError naming ``--max-size``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", raw)
    if not m or m.group(2).upper() not in _UNITS:
        raise ConfigError(f"--max-size={raw}: expected a size such as 500MB or 2GB (units B, KB, MB, GB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def _fmt(n: int) -> str:
    for unit, k in (("GB", 2 ** 30), ("MB", 2 ** 20), ("KB", 2 ** 10)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"


def _where(args):
    from lineage_jax.config import DataConfig
    from lineage_jax.data import cache
    from lineage_jax.data.sources import resolve_data_dir
    data_dir = resolve_data_dir(DataConfig(data_dir=args.data_dir or ""))
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigError(f"--data-dir={args.data_dir}: is a file; give the data directory")
    return data_dir, cache


def cmd_list(args) -> int:
    data_dir, cache = _where(args)
    rows = cache.entries(data_dir)
    total = sum(r["bytes"] for r in rows)
    if args.json:
        print(json.dumps({"dir": str(cache.cache_dir(data_dir)), "bytes": total, "caches": rows}, indent=1))
        return 0
    for r in rows:
        print(f"{_fmt(r['bytes']):>10}  used {cache.age(r['last_used']):>7} ago  {r['name']}")
    print(f"{len(rows)} token cache(s), {_fmt(total)} in {cache.cache_dir(data_dir)}")
    return 0


def cmd_clear(args) -> int:
    keep = parse_size(args.max_size) if args.max_size is not None else 0
    data_dir, cache = _where(args)
    removed = cache.prune(data_dir, keep)
    freed = sum(r["bytes"] for r in removed)
    left = cache.entries(data_dir)
    if args.json:
        print(json.dumps({"dir": str(cache.cache_dir(data_dir)), "removed": removed, "freed_bytes": freed,
                          "kept": len(left), "kept_bytes": sum(r["bytes"] for r in left)}, indent=1))
    else:
        print(f"removed {len(removed)} token cache(s), {_fmt(freed)}; kept {len(left)} "
              f"({_fmt(sum(r['bytes'] for r in left))}) in {cache.cache_dir(data_dir)}")
    return 0
