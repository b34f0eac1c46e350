"""Classical ordering metrics (Clark–Evans, Ripley K/L, CSR envelope) on known patterns."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from napari_nanodefect.core.defects.order import (
    _ripley_weights,
    clark_evans,
    csr_envelope,
    order_statistics,
    ripley_k,
)

WIN = (0.0, 0.0, 1000.0, 1000.0)


def _csr(rng, n=500, win=WIN):
    y0, x0, y1, x1 = win
    return np.column_stack([rng.uniform(y0, y1, n), rng.uniform(x0, x1, n)])


def _thomas(rng, n_parents=12, mean_children=40, sigma=15.0, win=WIN):
    """Thomas cluster process (Gaussian offspring around Poisson parents), clipped to win."""
    y0, x0, y1, x1 = win
    parents = _csr(rng, n_parents, win)
    counts = rng.poisson(mean_children, n_parents)
    pts = np.repeat(parents, counts, axis=0) + rng.normal(0, sigma, (counts.sum(), 2))
    keep = (pts[:, 0] >= y0) & (pts[:, 0] <= y1) & (pts[:, 1] >= x0) & (pts[:, 1] <= x1)
    return pts[keep]


def _lines(rng, n_lines=4, per_line=100, jitter=2.0, win=WIN):
    """Particles decorating a few straight defect lines (random positions along each)."""
    y0, x0, y1, x1 = win
    out = []
    for _ in range(n_lines):
        a, b = _csr(rng, 2, win)
        t = rng.uniform(0, 1, per_line)[:, None]
        out.append(a + t * (b - a) + rng.normal(0, jitter, (per_line, 2)))
    pts = np.concatenate(out)
    keep = (pts[:, 0] >= y0) & (pts[:, 0] <= y1) & (pts[:, 1] >= x0) & (pts[:, 1] <= x1)
    return pts[keep]


def _square_lattice(m, a):
    """m x m square lattice (spacing a) and the window of its Voronoi cells (area m^2 a^2)."""
    g = (np.arange(m) + 0.5) * a
    yy, xx = np.meshgrid(g, g, indexing="ij")
    return np.column_stack([yy.ravel(), xx.ravel()]), (0.0, 0.0, m * a, m * a)


# ----------------------------------------------------------------------------- Clark–Evans
def test_clark_evans_csr_donnelly_unbiased_uncorrected_biased_high():
    rng = np.random.default_rng(0)
    rc, ru = [], []
    for _ in range(20):
        p = _csr(rng)
        rc.append(clark_evans(p, WIN)["R"])
        ru.append(clark_evans(p, WIN, edge="none")["R"])
    mc, mu = float(np.mean(rc)), float(np.mean(ru))
    assert 0.98 <= mc <= 1.02, mc
    assert mu > mc + 0.01, (mu, mc)  # edge effect inflates the uncorrected index
    # z scores behave like N(0, 1) under CSR: not systematically significant
    zs = [clark_evans(_csr(rng), WIN)["z"] for _ in range(20)]
    assert abs(np.mean(zs)) < 0.8


def test_clark_evans_square_lattice_is_two():
    pts, win = _square_lattice(40, 10.0)
    ce0 = clark_evans(pts, win, edge="none")
    assert ce0["R"] == pytest.approx(2.0, rel=1e-9)  # analytic: a / (0.5 a)
    ce = clark_evans(pts, win)
    assert ce["R"] == pytest.approx(2.0, rel=0.02)
    assert ce["z"] > 10 and ce["p"] < 1e-6
    assert ce["mean_nn"] == pytest.approx(10.0)
    assert ce["n"] == 1600 and ce["density"] == pytest.approx(0.01)


@pytest.mark.parametrize("maker", [_thomas, _lines])
def test_clustered_patterns_detected(maker):
    rng = np.random.default_rng(3)
    pts = maker(rng)
    ce = clark_evans(pts, WIN)
    assert ce["R"] < 0.8, ce["R"]
    assert ce["p"] < 0.01 and ce["z"] < 0
    s = order_statistics(pts, WIN, n_sim=39)
    assert s["verdict"] == "clustered"
    assert s["outside_envelope"] is True and s["envelope_direction"] in ("above", "both")
    assert s["L_minus_r_at_max_px"] > 0


def test_regular_verdict_for_jittered_lattice():
    rng = np.random.default_rng(4)
    pts, win = _square_lattice(20, 50.0)
    pts = pts + rng.normal(0, 3.0, pts.shape)
    s = order_statistics(pts, win, n_sim=39)
    assert s["verdict"] == "regular"
    assert s["clark_evans_R"] > 1.5
    assert s["outside_envelope"] is True and s["envelope_direction"] in ("below", "both")


# ----------------------------------------------------------------------------- Ripley K
def test_ripley_weights_closed_form():
    win = (0.0, 0.0, 10.0, 10.0)
    c = np.array([[5.0, 5.0], [0.0, 5.0], [1.0, 1.0], [5.0, 2.0]])
    d = np.array([1.0, 1.0, math.sqrt(2.0), 4.0])
    w = _ripley_weights(c, d, win)
    # interior: 1; on an edge: half the circle inside; circle through the corner from
    # (1, 1): 180 deg outside; (5, 2), r=4: arc beyond the edge has half-angle acos(2/4)
    assert w[0] == pytest.approx(1.0)
    assert w[1] == pytest.approx(2.0)
    assert w[2] == pytest.approx(2.0)
    assert w[3] == pytest.approx(1.0 / (1.0 - 2 * math.acos(0.5) / (2 * math.pi)))
    # a centre exactly on a corner sees a quarter of any small circle
    assert _ripley_weights(np.array([[0.0, 0.0], [10.0, 10.0]]), np.array([1.0, 2.0]), win) == (
        pytest.approx([4.0, 4.0]))


@pytest.mark.parametrize("edge,tol", [("ripley", 0.02), ("border", 0.04)])
def test_ripley_k_csr_matches_pi_r2(edge, tol):
    rng = np.random.default_rng(1)
    r = np.array([50.0, 100.0, 150.0, 200.0, 250.0])
    ratios = [np.asarray(ripley_k(_csr(rng), WIN, r, edge=edge)["K"]) / (np.pi * r**2)
              for _ in range(20)]
    np.testing.assert_allclose(np.mean(ratios, axis=0), 1.0, atol=tol)


def test_ripley_k_no_correction_biased_low_under_csr():
    rng = np.random.default_rng(2)
    r = np.array([200.0, 250.0])
    ratios = [np.asarray(ripley_k(_csr(rng), WIN, r, edge="none")["K"]) / (np.pi * r**2)
              for _ in range(10)]
    assert np.all(np.mean(ratios, axis=0) < 0.9)


def test_csr_inside_envelope_clustered_outside():
    rng = np.random.default_rng(5)
    r = np.linspace(10, 250, 25)
    lo, hi = csr_envelope(500, WIN, r, n_sim=99, seed=7)
    assert lo.shape == hi.shape == r.shape and np.all(lo <= hi)
    assert np.all(lo < 0) and np.all(hi > 0)
    inside = []
    for _ in range(5):
        lmr = np.asarray(ripley_k(_csr(rng), WIN, r)["L_minus_r"])
        inside.append(np.mean((lmr >= lo) & (lmr <= hi)))
    assert np.mean(inside) >= 0.9, inside
    cl = _thomas(rng)
    _lo2, hi2 = csr_envelope(len(cl), WIN, r, n_sim=39, seed=7)
    lmr = np.asarray(ripley_k(cl, WIN, r)["L_minus_r"])
    assert np.mean(lmr > hi2) > 0.5


def test_csr_envelope_reproducible():
    r = [20.0, 60.0]
    a = csr_envelope(100, WIN, r, n_sim=19, seed=3)
    b = csr_envelope(100, WIN, r, n_sim=19, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


# ----------------------------------------------------------------------------- summary
def test_order_statistics_csr_random_and_json():
    rng = np.random.default_rng(6)
    s = order_statistics(_csr(rng), WIN, n_sim=39)
    assert s["verdict"] == "random"
    assert s["clark_evans_p"] > 0.05
    json.dumps(s)  # JSON-friendly
    assert "r_at_max_nm" not in s


def test_order_statistics_nm_scaling_exact():
    rng = np.random.default_rng(8)
    pts = _thomas(rng)
    px = order_statistics(pts, WIN, n_sim=19)
    nm = order_statistics(pts, WIN, pixel_size_nm=0.25, n_sim=19)
    for k in ("clark_evans_R", "clark_evans_z", "clark_evans_p", "verdict",
              "r_at_max_px", "max_abs_L_minus_r_px", "outside_envelope"):
        assert nm[k] == px[k]
    assert nm["r_at_max_nm"] == px["r_at_max_px"] * 0.25
    assert nm["max_abs_L_minus_r_nm"] == px["max_abs_L_minus_r_px"] * 0.25
    assert nm["mean_nn_nm"] == px["mean_nn_px"] * 0.25
    assert nm["density_per_nm2"] == pytest.approx(px["density_per_px2"] / 0.0625, rel=1e-12)
    assert nm["r_nm"] == [v * 0.25 for v in px["r_px"]]
    assert nm["pixel_size_nm"] == 0.25
    json.dumps(nm)


def test_too_few_points_and_outside_points():
    for pts in (np.empty((0, 2)), [[5.0, 5.0]], [[5.0, 5.0], [6.0, 6.0]]):
        ce = clark_evans(pts, WIN)
        assert math.isnan(ce["R"]) and ce["note"] == "too few points"
        k = ripley_k(pts, WIN, [10.0])
        assert math.isnan(k["K"][0]) and k["note"] == "too few points"
        s = order_statistics(pts, WIN)
        assert s["verdict"] is None and s["clark_evans_R"] is None
        assert s["note"] == "too few points"
        json.dumps(s)
    # points outside the window are ignored and counted
    rng = np.random.default_rng(9)
    p = _csr(rng, 200)
    extra = np.array([[-5.0, 10.0], [10.0, 2000.0], [np.nan, 1.0]])
    a = clark_evans(p, WIN)
    b = clark_evans(np.vstack([p, extra]), WIN)
    assert b["n"] == 200 and b["n_outside"] == 3 and b["R"] == a["R"]


def test_bad_arguments():
    with pytest.raises(ValueError):
        clark_evans(np.zeros((5, 2)), (0, 0, 0, 10))
    with pytest.raises(ValueError):
        clark_evans(np.zeros((5, 3)), WIN)
    with pytest.raises(ValueError):
        clark_evans(np.zeros((5, 2)), WIN, edge="bogus")
    with pytest.raises(ValueError):
        ripley_k(np.zeros((5, 2)), WIN, [-1.0])
    with pytest.raises(ValueError):
        order_statistics(np.zeros((5, 2)), WIN, pixel_size_nm=0)
