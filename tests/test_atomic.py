"""Atomic writes: a failing writer leaves the previous file intact and no temp files."""

from __future__ import annotations

import json

import pytest

from napari_nanodefect.core.atomic import atomic_write_json, atomic_write_with


def test_failed_write_keeps_old_file(tmp_path):
    target = tmp_path / "ann.json"
    atomic_write_json(target, {"v": 1})

    def broken(tmp):
        tmp.write_text('{"v": 2, "half')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_with(target, broken)
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.json"]


def test_nan_is_refused_before_touching_the_file(tmp_path):
    target = tmp_path / "s.json"
    atomic_write_json(target, {"ok": True})
    with pytest.raises(ValueError):
        atomic_write_json(target, {"bad": float("nan")})
    assert json.loads(target.read_text()) == {"ok": True}
