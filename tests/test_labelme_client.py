"""labelme's own LabelFile (labelme 6.3.1, in a separate venv) loads the files we write.

labelme imports PyQt5, which must never be imported into our process (napari uses
PyQt6), so it runs in its own venv through ``tests/labelme_client.py``. The venv is
``$NANODEFECT_LABELME_PYTHON``, else ``~/.cache/napari-nanodefect/labelme-venv``, created
on first use (``python tests/labelme_client.py --setup`` does it up front); the tests
skip when it cannot be created (no network).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_nanodefect.core.annotations import (
    AnnotationSet,
    Crop,
    LineAnnotation,
    ObjectAnnotation,
    PointAnnotation,
    read_labelme,
    write_labelme,
)
from napari_nanodefect.core.annotations import geometry

import labelme_client

H, W = 48, 64


@pytest.fixture(scope="module")
def labelme_py() -> Path:
    try:
        return labelme_client.labelme_python(create=True)
    except RuntimeError as e:
        pytest.skip(f"labelme {labelme_client.LABELME_VERSION} venv unavailable: {e}")


def _sources(folder: Path) -> dict[str, Path]:
    """An 8-bit grey PNG, a palette TIFF and a 16-bit TIFF of the same size."""
    import tifffile

    rng = np.random.default_rng(1)
    png = folder / "grey8.png"
    Image.fromarray(rng.integers(0, 256, (H, W), dtype=np.uint8)).save(png)
    pal = folder / "palette.tif"
    im = Image.fromarray((np.arange(H * W).reshape(H, W) % 5).astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 200, 200, 200] + [0] * (256 * 3 - 15))
    im.save(pal)
    t16 = folder / "deep16.tif"
    tifffile.imwrite(t16, (rng.integers(0, 4096, (H, W))).astype(np.uint16))
    assert Image.open(pal).mode == "P" and tifffile.imread(t16).dtype == np.uint16
    return {"png": png, "palette": pal, "uint16": t16}


def _annotations(image: Path) -> AnnotationSet:
    s = AnnotationSet(image_path=str(image), image_height=H, image_width=W, pixel_size_nm=0.8)
    s.crops.append(Crop(1, 1, 60, 45))
    s.objects.append(ObjectAnnotation("particle", [[10.5, 10.5], [20, 12], [16.25, 22], [8, 18]], instance_id=3,
                                      attributes={"touching": True}))
    s.objects.append(ObjectAnnotation("particle", geometry.rectangle_ring(30, 5, 44, 20),
                                      holes=[geometry.rectangle_ring(34, 9, 38, 13)]))
    s.objects.append(ObjectAnnotation("box", geometry.rectangle_ring(50, 30, 58, 40), shape_type="rectangle"))
    s.objects.append(ObjectAnnotation.from_circle("particle", 25.5, 35.5, 5))
    blob = np.zeros((8, 9), bool)
    blob[1:7, 1:8] = True
    blob[3:5, 3:5] = False
    (outer, holes), = geometry.trace_mask(blob, offset=(50, 2))
    s.objects.append(ObjectAnnotation("precipitate", outer, holes=holes, shape_type="mask"))
    s.lines.append(LineAnnotation("dislocation", [[2, 40], [20, 44]], width_px=2, shape_type="line"))
    s.lines.append(LineAnnotation("dislocation", [[30, 40], [40, 46], [50, 42]]))
    s.points.append(PointAnnotation("vacancy", 5.5, 5.5))
    s.points.append(PointAnnotation("site", 45.5, 25.5, radius=2))
    return s


EXPECTED_TYPES = ["rectangle", "polygon", "polygon", "polygon", "rectangle", "circle", "mask", "line", "linestrip",
                  "point", "circle"]
EXPECTED_LABELS = ["crop", "particle", "particle", "particle", "box", "particle", "precipitate", "dislocation",
                   "dislocation", "vacancy", "site"]


def test_labelme_loads_our_files(tmp_path, labelme_py):
    srcs = _sources(tmp_path)
    files = {}
    for kind, img in srcs.items():
        files[kind] = write_labelme(_annotations(img), tmp_path / "ann" / f"{kind}.json")
    written = {k: json.loads(p.read_text()) for k, p in files.items()}
    # the embedding rule: only the 8-bit PNG goes without imageData
    assert written["png"]["imageData"] is None
    assert written["palette"]["imageData"] and written["uint16"]["imageData"]
    assert all(d["imagePath"] == f"../{srcs[k].name}" for k, d in written.items())

    res = labelme_client.load_with_labelme(labelme_py, list(files.values()))
    assert res["labelme_version"] == labelme_client.LABELME_VERSION
    by_kind = dict(zip(files, res["files"]))
    for kind, rec in by_kind.items():
        assert rec["ok"], f"{kind}: {rec.get('error')}"
        assert rec["n_shapes"] == len(EXPECTED_TYPES)
        assert rec["shape_types"] == EXPECTED_TYPES
        assert rec["labels"] == EXPECTED_LABELS
        assert rec["image_shape"][:2] == [H, W]
        assert rec["image_dtype"] == "uint8"
        assert rec["qimage"] == [H, W]  # Qt (what the labelme GUI uses) decodes the image too
        assert rec["points"] == [s["points"] for s in written[kind]["shapes"]]
        assert rec["other_data"]["pixel_size_nm"] == 0.8
        assert rec["group_ids"][1] == 3 and rec["group_ids"][2] == rec["group_ids"][3]
        assert all(a is None or a > 0 for a in rec["mask_areas"])
        assert rec["mask_areas"][6] == 6 * 7 - 4  # labelme's own mask of our mask shape
    assert by_kind["palette"]["image_shape"] == [H, W, 3]  # palette expanded to RGB
    # and what labelme loaded reads back into the same annotations
    for kind, p in files.items():
        back = read_labelme(p)
        assert len(back.objects) == 5 and len(back.objects[1].holes) == 1
        assert back.objects[4].shape_type == "mask" and back.objects[4].area == 6 * 7 - 4
        assert back.objects[3].circle == (25.5, 35.5, 5.0)


def test_labelme_needs_our_embedding_for_palette_tiff(tmp_path, labelme_py):
    """Why embed_image='auto' embeds TIFFs: labelme alone cannot open a palette TIFF."""
    srcs = _sources(tmp_path)
    p = write_labelme(_annotations(srcs["palette"]), tmp_path / "no_embed.json", embed_image=False)
    assert json.loads(p.read_text())["imageData"] is None
    (rec,) = labelme_client.load_with_labelme(labelme_py, [p])["files"]
    assert not rec["ok"] and "JPEG" in rec["error"]


def test_labelme_client_never_imported_here():
    assert "PyQt5" not in sys.modules
    assert "labelme" not in sys.modules
