"""Where the optional shared test data is (``../shared/testdata`` beside the checkout).

Found from a checkout (``<root>/bench``) or a git worktree one level further
down (``<root>/wt/<name>/bench``); ``$LEZA_BENCH_TESTDATA`` names it outright.
None when absent: the benches then fall back to their own few samples, and say so.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["testdata"]

_HERE = Path(__file__).resolve().parent


def testdata(*parts: str) -> Path | None:
    """``shared/testdata/<parts>`` if it exists, else None."""
    given = os.environ.get("LEZA_BENCH_TESTDATA")
    roots = [Path(given)] if given else [p / "shared" / "testdata" for p in _HERE.parents[:3]]
    for root in roots:
        path = root.joinpath(*parts)
        if path.exists():
            return path
    return None
