"""Monte Carlo deposition simulator (core.defects.simulate)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from napari_nanodefect.core.defects.simulate import (
    Deposition,
    defect_map,
    ordering_sample,
    random_defects,
    render_deposition,
    simulate_deposition,
)

SHAPE = (256, 256)


def _clark_evans(pts, shape, periodic=True):
    """Mean nearest-neighbour distance / its expectation under CSR (0.5 / sqrt(density))."""
    pts = np.asarray(pts, float)
    tree = cKDTree(np.mod(pts, shape), boxsize=shape) if periodic else cKDTree(pts)
    d, _ = tree.query(np.mod(pts, shape) if periodic else pts, k=2)
    lam = len(pts) / (shape[0] * shape[1])
    return d[:, 1].mean() / (0.5 / np.sqrt(lam))


@pytest.fixture(scope="module")
def lines_map():
    lines = [np.array([[40, 0], [40, 255]]), np.array([[0, 128], [255, 128]]), np.array([[170, 0], [250, 200]])]
    return defect_map(SHAPE, lines=lines, width_px=3)


def test_defect_map_geometry():
    m = defect_map((50, 60), lines=[np.array([[10, 5], [10, 50]])], points=[(30, 30, 2)],
                   areas=[np.array([[40, 5], [40, 15], [48, 15], [48, 5]])], width_px=3)
    assert m.dtype == bool and m.shape == (50, 60)
    assert m[9:12, 5:51].all() and not m[8, 20] and not m[12, 20]  # 3 px wide line
    assert m[30, 30] and m[28, 30] and not m[30, 33]  # disk r=2
    assert m[44, 10] and not m[44, 20]  # polygon
    assert not defect_map((20, 20)).any()
    for kind in ("lines", "points", "mixed"):
        d, g = random_defects(SHAPE, kind, rng=3)
        assert d.any() and d.mean() < 0.2
        assert np.array_equal(d, defect_map(SHAPE, g["lines"], g["points"], g["areas"], g["width_px"]))


def test_conservation_and_adsorption():
    dep = simulate_deposition(None, 800, steps=5, seed=1, shape=SHAPE)
    assert isinstance(dep, Deposition)
    assert 0 < len(dep.positions) < 800  # 1 - 0.9**5 ~ 41 % adsorbed
    assert abs(len(dep.positions) / 800 - (1 - 0.9**5)) < 0.08
    dep = simulate_deposition(None, 800, steps=150, seed=1, shape=SHAPE)
    assert len(dep.positions) <= 800 and len(dep.positions) >= 798  # 0.9**150 ~ 1e-7
    assert dep.n_solution == 800 - len(dep.positions)
    assert len(np.unique(dep.ids)) == len(dep.ids)
    assert (dep.positions >= 0).all() and (dep.positions < np.array(SHAPE)).all()
    assert not dep.on_defect.any()
    with pytest.raises(ValueError):
        simulate_deposition(None, 10, p_adsorb=1.5, shape=SHAPE)


def test_determinism(lines_map):
    a = simulate_deposition(lines_map, 500, steps=300, seed=7)
    b = simulate_deposition(lines_map, 500, steps=300, seed=7)
    c = simulate_deposition(lines_map, 500, steps=300, seed=8)
    assert np.array_equal(a.positions, b.positions) and np.array_equal(a.on_defect, b.on_defect)
    assert not np.array_equal(a.positions, c.positions)


def test_particles_on_defects_never_move(lines_map):
    short = simulate_deposition(lines_map, 600, steps=200, seed=3)
    long = simulate_deposition(lines_map, 600, steps=800, seed=3)
    assert short.on_defect.sum() > 50
    pos_long = dict(zip(long.ids.tolist(), map(tuple, long.positions)))
    fixed_long = dict(zip(long.ids.tolist(), long.on_defect.tolist()))
    for i, p, fx in zip(short.ids.tolist(), map(tuple, short.positions), short.on_defect.tolist()):
        if fx:
            assert pos_long[i] == p and fixed_long[i]
    # fixed particles lie on the defect map; mobile ones do not
    r, c = long.positions.astype(int).T
    assert lines_map[r[long.on_defect], c[long.on_defect]].all()
    assert not lines_map[r[~long.on_defect], c[~long.on_defect]].any()
    # the mobile particles did move between the two runs
    moved = [pos_long[i] != p for i, p, fx in zip(short.ids.tolist(), map(tuple, short.positions), short.on_defect.tolist())
             if not fx and not fixed_long[i]]
    assert np.mean(moved) > 0.5


def test_defects_order_particles(lines_map):
    dep = simulate_deposition(lines_map, 1500, steps=1500, seed=0)
    near = ndi.binary_dilation(lines_map, iterations=2)
    r, c = dep.positions.astype(int).T
    frac_on = near[r, c].mean()
    assert frac_on > 5 * near.mean()
    assert dep.on_defect.mean() > 0.4


def test_no_defects_is_csr():
    shape = (512, 512)
    dep = simulate_deposition(None, 3000, steps=400, seed=2, shape=shape)
    assert len(dep.positions) == 3000
    R = _clark_evans(dep.positions, shape)
    assert 0.9 < R < 1.1, R
    # chi-square uniformity of counts on an 8x8 grid (63 dof: 99.9 % quantile ~ 103)
    h, _, _ = np.histogram2d(dep.positions[:, 0], dep.positions[:, 1], bins=8, range=[[0, 512], [0, 512]])
    e = len(dep.positions) / 64
    assert ((h - e) ** 2 / e).sum() < 103
    # whereas line defects cluster the particles (nearest neighbours much closer)
    d, _ = random_defects(shape, "lines", n=4, rng=2)
    dep_l = simulate_deposition(d, 3000, steps=2000, seed=2)
    assert _clark_evans(dep_l.positions, shape) < 0.8


def test_exclusion():
    # dense (close to jamming for a 3 px exclusion disk): the exclusion must still hold exactly
    dep = simulate_deposition(None, 400, steps=200, seed=4, shape=(128, 128), exclusion_px=3)
    assert len(dep.positions) > 380
    d = cKDTree(dep.positions, boxsize=(128, 128)).query(dep.positions, k=2)[0][:, 1]
    assert d.min() > 3
    free = simulate_deposition(None, 400, steps=200, seed=4, shape=(128, 128))
    d0 = cKDTree(free.positions, boxsize=(128, 128)).query(free.positions, k=2)[0][:, 1]
    assert np.mean(d0 <= 3) > 0.1
    # with defects too: particles pile up on the lines but keep their distance
    m = defect_map((128, 128), lines=[np.array([[64, 0], [64, 127]])])
    dep = simulate_deposition(m, 200, steps=300, seed=4, exclusion_px=2.5)
    d = cKDTree(dep.positions, boxsize=(128, 128)).query(dep.positions, k=2)[0][:, 1]
    assert d.min() > 2.5 and dep.on_defect.sum() > 20


@pytest.mark.parametrize("mode,sign", [("haadf", 1), ("sem", -1), ("bf", -1)])
def test_render(mode, sign):
    dep = simulate_deposition(None, 150, steps=60, seed=5, shape=SHAPE, exclusion_px=8)
    img, lab = render_deposition(dep, SHAPE, diameter_nm=3.0, pixel_size_nm=0.5, mode=mode, seed=0)
    assert img.shape == SHAPE and img.dtype == np.uint8 and lab.shape == SHAPE
    n = len(dep.positions)
    n_lab = len(np.unique(lab)) - 1
    assert n_lab == lab.max() and 0.95 * n <= n_lab <= n
    # the particle centres are brighter (HAADF) / darker (BF, SEM) than the support
    r, c = np.rint(dep.positions).astype(int).T
    inside = img[r, c].astype(float).mean()
    support = img[ndi.binary_dilation(lab > 0, iterations=3) == 0].astype(float).mean()
    assert sign * (inside - support) > 30, (inside, support)
    # labels sit on the particle positions
    assert (lab[r, c] > 0).mean() > 0.95
    # scaled rendering
    _img2, lab2 = render_deposition(dep, (512, 512), diameter_nm=3.0, pixel_size_nm=0.25, mode=mode, seed=0)
    assert lab2.shape == (512, 512) and abs(int(lab2.max()) - n_lab) <= 0.05 * n


def test_ordering_sample():
    stats = {}
    for ordered in (True, False):
        img, lab, defects, px = ordering_sample((256, 256), ordered=ordered, seed=0)
        assert img.dtype == np.uint8 and lab.shape == img.shape == defects.shape and px > 0
        assert lab.max() > 50
        cen = np.array(ndi.center_of_mass(lab > 0, lab, np.arange(1, lab.max() + 1)))
        stats[ordered] = (_clark_evans(cen, img.shape, periodic=False), defects.any())
        if ordered:
            near = ndi.binary_dilation(defects, iterations=3)
            assert near[tuple(np.rint(cen).astype(int).T)].mean() > 3 * near.mean()
    assert stats[True][1] and not stats[False][1]
    assert stats[True][0] < stats[False][0] - 0.1, stats


@pytest.mark.gui
def test_ordering_sample_in_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-nanodefect", "ordering")
    names = [ly.name for ly in viewer.layers]
    assert names == ["deposition ordered", "hidden line defects", "deposition random"]
    np.testing.assert_allclose(viewer.layers["deposition ordered"].scale, [0.5, 0.5])
    assert viewer.layers["hidden line defects"].data.any()
