"""`nanodefect order`: particle ordering of a label image against complete spatial randomness."""

from __future__ import annotations

import json

import numpy as np

from napari_nanodefect.cli import main
from napari_nanodefect.core.annotations import write_label_tiff


def _disks(centres, shape=(400, 400), r=3):
    lab = np.zeros(shape, np.uint16)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for i, (cy, cx) in enumerate(centres, start=1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    return lab


def test_order_cli_clustered_regular_random(tmp_path, capsys):
    rng = np.random.default_rng(1)
    # particles gathered on three lines (ordered by defects)
    t = rng.uniform(10, 390, 240)
    rows = np.repeat([80, 200, 320], 80) + rng.normal(0, 2, 240)
    lines = _disks(np.column_stack([rows, t]))
    grid = _disks([(y, x) for y in range(20, 400, 24) for x in range(20, 400, 24)])
    csr = _disks(rng.uniform(5, 395, (240, 2)))
    verdicts = {}
    for name, lab in {"lines": lines, "grid": grid, "csr": csr}.items():
        p = write_label_tiff(tmp_path / f"{name}_labels.tif", lab, pixel_size_nm=0.5)
        assert main(["order", str(p), "--json"]) == 0
        (st,) = json.loads(capsys.readouterr().out)
        verdicts[name] = st["verdict"]
        assert st["n"] == len(np.unique(lab)) - 1
        assert st["mean_nn_nm"] == st["mean_nn_px"] * 0.5
    assert verdicts == {"lines": "clustered", "grid": "regular", "csr": "random"}
    assert main(["order", str(tmp_path / "lines_labels.tif")]) == 0
    assert "clustered" in capsys.readouterr().out
