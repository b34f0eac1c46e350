"""Defect annotations -> per-class masks with line defects at a physical width."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nanodefect.core.annotations import (
    AnnotationSet,
    LineAnnotation,
    ObjectAnnotation,
    PointAnnotation,
    read_labelme,
    write_labelme,
)
from napari_nanodefect.core.defects.targets import DEFAULT_CLASSES, defect_masks, physical_width_px
from napari_nanodefect.core.errors import NanodefectError


def _set(ps=0.5, scale=1.0):
    """A 200x240 image: one straight grain boundary 100 px long, a square sheet-border
    area, a point defect; coordinates scaled by ``scale`` (a second magnification)."""
    s = scale
    return AnnotationSet(
        image_height=int(200 * s), image_width=int(240 * s), pixel_size_nm=ps / s,
        lines=[LineAnnotation("grain_boundary", np.array([[10, 20], [110, 20]]) * s)],
        objects=[ObjectAnnotation("topological_defect", np.array([[150, 100], [190, 100], [190, 140], [150, 140]]) * s)],
        points=[PointAnnotation("point_defect", 60 * s, 150 * s)],
    )


def test_line_width_from_particle_diameter_exact_area_and_magnification_free():
    dm = defect_masks(_set(), particle_diameter_nm=4.0)  # Boiko: width = d/2 = 2 nm = 4 px
    assert dm.classes == list(DEFAULT_CLASSES) and dm.masks.shape == (4, 200, 240)
    gb = dm.channel("grain_boundary")
    assert dm.line_width_px == 4.0
    assert gb.sum() == 400  # 100 px x 4 px, flat ends, pixel centres inside
    rows = np.flatnonzero(gb.any(axis=1))
    assert rows.tolist() == [18, 19, 20, 21]
    assert dm.channel("topological_defect").sum() == 40 * 40
    assert not dm.channel("sheet_border").any()
    # a point defect without radius: a disk of one particle diameter (8 px)
    assert dm.channel("point_defect").sum() == pytest.approx(np.pi * 8**2, rel=0.03)
    # the same scene at twice the magnification: same physical areas
    dm2 = defect_masks(_set(scale=2.0), particle_diameter_nm=4.0)
    for name in DEFAULT_CLASSES:
        a1 = dm.channel(name).sum() * 0.5**2
        a2 = dm2.channel(name).sum() * 0.25**2
        assert a2 == pytest.approx(a1, rel=0.02), name


def test_skeleton_of_the_target_has_the_drawn_length():
    from napari_nanodefect.core.measure.skeleton import skeleton_table

    aset = AnnotationSet(image_height=300, image_width=300, pixel_size_nm=0.5,
                         lines=[LineAnnotation("grain_boundary", np.array([[20, 30], [150, 120], [280, 110]]))])
    true_nm = aset.lines[0].length * 0.5
    dm = defect_masks(aset, line_width_nm=3.0)
    table, summary = skeleton_table(dm.masks, 0.5, class_names=dm.classes)
    got = table[table["class"] == "grain_boundary"]["length_nm"].sum()
    assert got == pytest.approx(true_nm, rel=0.03)


def test_explicit_widths_unknown_labels_and_errors(tmp_path):
    aset = _set()
    aset.lines.append(LineAnnotation("crack", np.array([[5, 5], [50, 5]])))
    aset.lines.append(LineAnnotation("grain_boundary", np.array([[10, 100], [110, 100]]), width_px=2))
    dm = defect_masks(aset, line_width_px=6)
    assert dm.ignored == {"crack": 1}
    gb = dm.channel("grain_boundary")
    assert gb[:60].sum() == 600 and gb[60:].sum() == 200  # default 6 px; its own 2 px
    assert physical_width_px(0.5, line_width_nm=0.1) == 1.0  # never thinner than a pixel
    with pytest.raises(NanodefectError, match="pixel size"):
        defect_masks(AnnotationSet(image_height=10, image_width=10, lines=aset.lines[:1]), line_width_nm=2)
    with pytest.raises(NanodefectError, match="width"):
        defect_masks(aset)
    with pytest.raises(NanodefectError, match="distinct"):
        defect_masks(aset, ["a", "a"], line_width_px=2)
    # through LabelMe: lines, polygons and points survive the file
    p = write_labelme(_set(), tmp_path / "d.json", embed_image=False)
    back = defect_masks(read_labelme(p), particle_diameter_nm=4.0, shape=(200, 240))
    np.testing.assert_array_equal(back.masks, defect_masks(_set(), particle_diameter_nm=4.0).masks)
