"""Shared test helpers.

Real data lives outside the repository in ``../shared/data/real`` (or the folder named
by ``NANODEFECT_SHARED``); tests that need it skip with a clear reason when absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NANODEFECT_SHARED", REPO.parent / "shared"))
REAL = SHARED / "data" / "real"


def real_file(*parts: str) -> Path:
    """Path of a file under ../shared/data/real; skips the test when it is absent."""
    p = REAL.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p} (needs ../shared/data/real)")
    return p


@pytest.fixture
def real():
    """Fixture form of :func:`real_file`."""
    return real_file
