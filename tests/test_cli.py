"""The nanodefect command: info, convert, demo, python -m."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from napari_nanodefect.cli import main
from napari_nanodefect.core.annotations import read_coco, read_label_tiff, read_labelme
from napari_nanodefect.core.io.write import write_tiff


def test_info_json_synthetic(tmp_path, capsys):
    p = write_tiff(tmp_path / "a.tif", np.zeros((40, 50), np.uint8), pixel_size_nm=1.5)
    assert main(["info", str(p), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["pixel_size_nm"] == pytest.approx(1.5)
    assert info["shape"] == [40, 50] and info["dtype"] == "uint8"
    assert info["valid_region"] == {"y0": 0, "x0": 0, "y1": 40, "x1": 50}
    assert info["scale_bar"] is None and "metadata" not in info


def test_info_unknown_pixel_size_is_null(tmp_path, capsys):
    from PIL import Image

    p = tmp_path / "plain.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(p)
    assert main(["info", str(p), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["pixel_size_nm"] is None and info["pixel_size_source"] is None
    assert main(["info", str(p)]) == 0
    assert "unknown" in capsys.readouterr().out


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "napari_nanodefect", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "napari-nanodefect" in out.stdout


def test_demo_writes_consistent_outputs(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "pixel size 0.5 nm" in printed
    labels = read_label_tiff(tmp_path / "demo_truth_labels.tif")
    n = int(len(np.unique(labels.labels)) - 1)
    (truth,) = read_coco(tmp_path / "demo_truth.coco.json")
    assert len(truth.objects) == n and f"count      {n} particles" in printed
    crops = read_labelme(tmp_path / "demo.json")
    assert len(crops.crops) == 2 and 20 <= len(crops.objects) <= 50
    rows = (tmp_path / "particles.csv").read_text().splitlines()
    assert rows[0].startswith("label,class,area_nm2,ecd_nm") and len(rows) == n + 1
    ecd = np.array([float(r.split(",")[3]) for r in rows[1:]])
    area_px = np.bincount(labels.labels.ravel())[1:]
    area_px = area_px[area_px > 0]
    np.testing.assert_allclose(np.sort(ecd), np.sort(2 * np.sqrt(area_px * 0.25 / np.pi)), rtol=1e-4)
    assert f"median D   {np.median(ecd):.2f} nm" in printed
    assert (tmp_path / "histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_convert_cli_roundtrip(tmp_path, capsys):
    main(["demo", "--out", str(tmp_path / "d")])
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "d" / "demo.json"), "--to", "coco", "--out", str(tmp_path / "c.json")]) == 0
    assert main(["convert", str(tmp_path / "c.json"), "--to", "labels", "--out", str(tmp_path / "lab")]) == 0
    written = capsys.readouterr().out.split()
    lab = read_label_tiff(written[-1])
    src = read_labelme(tmp_path / "d" / "demo.json")
    assert lab.n_objects == len(src.objects)
    # areas survive: label pixels == rasterised polygon areas
    assert np.count_nonzero(lab.labels) == pytest.approx(sum(o.area for o in src.objects), rel=0.01)


def test_convert_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["convert", str(bad), "--to", "coco", "--out", str(tmp_path / "o.json")]) == 2
    assert "bad.json" in capsys.readouterr().err
