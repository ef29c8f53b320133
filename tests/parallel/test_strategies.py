"""The named strategies are one list (parallel/strategies.py): docs/parallelism.md's table
names exactly them, in order. (tests/parallel/test_axes.py resolves each for every model;
tests/parallel/test_shard_report.py runs them all through ``shard-report --compare``.)"""
import re
from pathlib import Path

from parallel.strategies import NAMED

DOC = Path(__file__).resolve().parents[2] / "docs" / "parallelism.md"


def test_the_docs_table_names_the_named_strategies_in_order():
    table = DOC.read_text().split("## Named strategies", 1)[1].split("\n\n")[2]
    assert re.findall(r"^\| `([^`]+)` \|", table, flags=re.M) == list(NAMED)
