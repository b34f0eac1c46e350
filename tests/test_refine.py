"""2-D Gaussian contour refinement (core.measure.refine) on synthetic STM height maps."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest

from napari_nanodefect.core.errors import NanodefectError
from napari_nanodefect.core.measure.refine import (
    PARAM_COLUMNS,
    RefineResult,
    refine_gaussian,
)

# (x0, y0, sigma_major, sigma_minor, angle_deg, amplitude): round, elongated along x,
# rotated +35 deg, rotated -60 deg, small round and weaker
PARTICLES = [
    (30.0, 30.0, 4.0, 4.0, 0.0, 1.0),
    (90.3, 29.6, 6.0, 3.0, 0.0, 1.0),
    (30.7, 90.2, 6.0, 3.5, 35.0, 1.0),
    (90.0, 90.4, 5.0, 2.5, -60.0, 0.8),
    (150.2, 59.8, 3.0, 3.0, 0.0, 0.6),
]
SHAPE = (130, 190)
BACKGROUND = 0.5
NOISE = 0.02


def _q(xx, yy, p, offset=(0.0, 0.0)):
    x0, y0, s1, s2, th, _ = p
    t = math.radians(th)
    dx, dy = xx - x0 - offset[0], yy - y0 - offset[1]
    u = dx * math.cos(t) + dy * math.sin(t)
    v = -dx * math.sin(t) + dy * math.cos(t)
    return (u / s1) ** 2 + (v / s2) ** 2


def render(parts=PARTICLES, shape=SHAPE, background=BACKGROUND, noise=NOISE, seed=0, plane=(0.0, 0.0)):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    z = background + plane[0] * xx + plane[1] * yy + rng.normal(0.0, noise, shape)
    for p in parts:
        z += p[5] * np.exp(-0.5 * _q(xx, yy, p))
    return z


def rough_masks(parts=PARTICLES, shape=SHAPE, frac=0.8, offset=(0.0, 0.0)):
    """Masks where the true Gaussian >= frac (frac high = too small), optionally shifted."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    lab = np.zeros(shape, np.int32)
    for i, p in enumerate(parts):
        lab[np.exp(-0.5 * _q(xx, yy, p, offset)) >= frac] = i + 1
    return lab


def analytic_area(p, level):
    k = math.sqrt(-2.0 * math.log(level))
    return math.pi * (p[2] * k) * (p[3] * k)


def angle_diff(a, b):
    d = (a - b) % 180.0
    return min(d, 180.0 - d)


def assert_recovered(res, parts=PARTICLES, level=0.5, centre_tol=0.2, sigma_tol=0.05, area_tol=0.05):
    df = res.params
    assert res.n_failed == 0, df[["label", "reason"]]
    assert res.n_fitted == len(parts)
    for i, p in enumerate(parts):
        row = df[df.label == i + 1].iloc[0]
        assert row.success and row.reason == ""
        assert abs(row.x0_px - p[0]) < centre_tol and abs(row.y0_px - p[1]) < centre_tol, row
        assert row.sigma_major_px == pytest.approx(p[2], rel=sigma_tol)
        assert row.sigma_minor_px == pytest.approx(p[3], rel=sigma_tol)
        if p[2] / p[3] > 1.5:
            assert angle_diff(row.angle_deg, p[4]) < 3.0, (row.angle_deg, p[4])
        assert row.amplitude == pytest.approx(p[5], rel=0.05)
        assert row.refined_area_px == pytest.approx(analytic_area(p, level), rel=area_tol)
        assert row.diameter_px == pytest.approx(2 * math.sqrt(row.refined_area_px / math.pi), rel=1e-9)


# -- accuracy from rough initial masks ---------------------------------------------------

@pytest.mark.parametrize(
    "frac, offset",
    [
        (0.85, (0.0, 0.0)),    # thresholded at a high level: far too small
        (0.5, (2.0, 0.0)),     # right size, offset by 2 px
        (0.9, (2.0, -2.0)),    # tiny and offset diagonally
        (0.1, (0.0, 0.0)),     # too large
    ],
    ids=["too-small", "offset-2px", "tiny-offset", "too-large"],
)
def test_recovers_known_gaussians_from_rough_masks(frac, offset):
    z = render()
    res = refine_gaussian(z, rough_masks(frac=frac, offset=offset))
    assert isinstance(res, RefineResult)
    assert_recovered(res)
    bg = res.params.background.to_numpy()
    assert np.allclose(bg, BACKGROUND, atol=0.01)
    assert (res.params.rms_residual < 1.3 * NOISE).all()


@pytest.mark.parametrize("level", [0.25, 0.5, 0.75])
def test_contour_area_matches_analytic_at_level(level):
    res = refine_gaussian(render(), rough_masks(frac=0.7), level=level)
    assert_recovered(res, level=level)
    assert res.level == level
    # the drawn ellipse has (to discretisation) the analytic area, for the larger particles
    for i, p in enumerate(PARTICLES[:4]):
        drawn = res.params.drawn_area_px[i]
        assert drawn == pytest.approx(analytic_area(p, level), rel=0.10), (i, drawn)


def test_tilted_plane_background():
    z = render(plane=(0.004, -0.003))
    res = refine_gaussian(z, rough_masks(frac=0.8, offset=(1.0, 1.0)))
    assert_recovered(res)
    # background column = plane value under the fitted centre
    for i, p in enumerate(PARTICLES):
        expect = BACKGROUND + 0.004 * p[0] - 0.003 * p[1]
        assert res.params.background[i] == pytest.approx(expect, abs=0.01)


def test_constant_background_model():
    res = refine_gaussian(render(), rough_masks(frac=0.6), background="constant")
    assert_recovered(res)


def test_dark_polarity():
    z = -render()
    res = refine_gaussian(z, rough_masks(frac=0.6), polarity="dark")
    assert res.n_fitted == len(PARTICLES)
    assert (res.params.amplitude < 0).all()
    assert res.params.background.to_numpy() == pytest.approx(-BACKGROUND, abs=0.01)
    # bright polarity on the same data: every fit fails with a reason, nothing is dropped
    bad = refine_gaussian(z, rough_masks(frac=0.6))
    assert bad.n_failed == len(PARTICLES) and bad.n_fitted == 0
    assert (bad.params.reason != "").all()
    assert np.array_equal(bad.labels, rough_masks(frac=0.6))


def test_nan_pixels_are_ignored():
    z = render()
    z[28:31, 20:24] = np.nan
    z[95:97, 80:100] = np.nan
    res = refine_gaussian(z, rough_masks(frac=0.6))
    assert_recovered(res, centre_tol=0.2, sigma_tol=0.05)


def test_integer_heights_are_accepted():
    z = np.round(render() * 1000).astype(np.uint16)      # raw STM counts
    res = refine_gaussian(z, rough_masks(frac=0.6))
    assert res.n_fitted == len(PARTICLES)
    assert res.params.amplitude[0] == pytest.approx(1000, rel=0.05)


# -- failures: counted, reasoned, originals kept -----------------------------------------

def test_label_on_flat_noise_fails_and_is_kept_unchanged():
    z = render(parts=PARTICLES[:4])                      # particle 5 is NOT in the image
    lab = rough_masks(frac=0.5)                          # ... but its label is
    lab[100:106, 150:157] = 9                            # and one more blob on flat noise
    res = refine_gaussian(z, lab)
    assert res.n_fitted == 4
    assert res.n_failed == 2
    assert res.failed_labels == [5, 9]
    df = res.params.set_index("label")
    for bad in (5, 9):
        assert not df.loc[bad, "success"]
        code = df.loc[bad, "reason"].split(":")[0]
        assert code in {"not_converged", "non_finite", "sigma_not_positive", "wrong_sign",
                        "centre_outside_window", "sigma_too_small", "sigma_too_large",
                        "amplitude_below_noise", "not_significant", "centre_on_other_label"}, \
            df.loc[bad, "reason"]
        assert np.array_equal(res.labels == bad, lab == bad)          # mask unchanged
        assert df.loc[bad, "drawn_area_px"] == np.count_nonzero(lab == bad)
        assert np.isnan(df.loc[bad, ["x0_px", "sigma_major_px", "refined_area_px", "diameter_px"]]
                        .to_numpy(float)).all()
    assert "2 fits failed (labels 5, 9; originals kept)" in res.summary()


def test_noise_only_labels_all_fail():
    rng = np.random.default_rng(7)
    z = 0.5 + rng.normal(0, 0.05, (200, 200))
    yy, xx = np.mgrid[:200, :200]
    lab = np.zeros(z.shape, np.int32)
    k = 1
    for cy in range(15, 190, 40):
        for cx in range(15, 190, 40):
            r = 1 + (k % 6)
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
            k += 1
    res = refine_gaussian(z, lab)
    assert res.n_fitted == 0 and res.n_failed == k - 1
    assert np.array_equal(res.labels, lab)


def test_not_converged_is_a_failure():
    lab = rough_masks(frac=0.6)
    res = refine_gaussian(render(), lab, max_iter=1)
    assert res.n_failed == len(PARTICLES)
    assert res.params.reason.str.startswith("not_converged").all()
    assert np.array_equal(res.labels, lab)


def test_too_few_pixels():
    z = np.zeros((3, 4))
    lab = np.zeros((3, 4), np.int32)
    lab[1, 1:3] = 4
    res = refine_gaussian(z, lab)
    assert res.n_failed == 1 and res.failed_labels == [4]
    assert res.params.reason[0].startswith("too_few_pixels")
    assert np.array_equal(res.labels, lab)


def test_fit_sliding_onto_a_neighbour_fails_and_failed_mask_has_priority():
    parts = [PARTICLES[0]]
    z = render(parts=parts)
    lab = rough_masks(parts=parts, frac=0.8)
    lab[30:34, 33:40] = 2     # a spurious label on particle 1's flank, inside its FWHM ellipse
    res = refine_gaussian(z, lab)
    assert res.params.success.tolist() == [True, False]
    assert res.params.reason[1].startswith("centre_on_other_label: the fit converged onto label 1")
    # the failed label keeps all its pixels even where particle 1's ellipse covers them
    assert np.array_equal(res.labels == 2, lab == 2)
    assert res.params.drawn_area_px[0] < round(res.params.refined_area_px[0]) - 5


# -- the refined label image -------------------------------------------------------------

def test_refined_labels_are_the_contour_ellipses():
    lab = rough_masks(frac=0.9, offset=(2.0, 0.0)).astype(np.uint16)
    res = refine_gaussian(render(), lab, level=0.5)
    out = res.labels
    assert out.shape == lab.shape and out.dtype == lab.dtype
    assert set(np.unique(out)) == set(np.unique(lab))            # same ids, nothing dropped
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]].astype(float)
    for i, row in res.params.iterrows():
        t = math.radians(row.angle_deg)
        dx, dy = xx - row.x0_px, yy - row.y0_px
        u = dx * math.cos(t) + dy * math.sin(t)
        v = -dx * math.sin(t) + dy * math.cos(t)
        inside = (u / row.sigma_major_px) ** 2 + (v / row.sigma_minor_px) ** 2 <= -2 * math.log(0.5)
        # separated particles: the label is exactly the ellipse (1 px tolerance at the rim)
        assert np.count_nonzero((out == row.label) ^ inside) <= 2, row.label
        assert row.drawn_area_px == np.count_nonzero(out == row.label)


def _pair(sep, sigma=5.0):
    parts = [(40.0, 40.0, sigma, sigma, 0.0, 1.0), (40.0 + sep, 40.0, sigma, sigma, 0.0, 1.0)]
    z = render(parts=parts, shape=(80, 100), noise=0.01)
    yy, xx = np.mgrid[:80, :100]
    lab = np.zeros((80, 100), np.int32)
    lab[(yy - 40) ** 2 + (xx - 40) ** 2 <= 9] = 1                # small seeds
    lab[(yy - 40) ** 2 + (xx - 40 - sep) ** 2 <= 9] = 2
    return parts, z, lab, xx


@pytest.mark.parametrize("sep", [11.0, 15.0])      # 2.2 and 3 sigma: FWHM contours touch
def test_touching_pair_is_fitted_jointly(sep):
    parts, z, lab, _ = _pair(sep)
    res = refine_gaussian(z, lab)
    assert_recovered(res, parts=parts)
    assert res.params.n_neighbours.tolist() == [1, 1]
    # without the joint fit each particle is pulled towards the other
    single = refine_gaussian(z, lab, joint=False).params
    assert single.x0_px[0] - 40 > 0.5 and single.sigma_major_px[0] > 5.5


def test_overlapping_ellipses_split_at_nearest_centre():
    _, z, lab, xx = _pair(11.0)
    res = refine_gaussian(z, lab, level=0.25)         # contour radius 8.3 px: they overlap
    assert res.n_fitted == 2
    c = res.params[["x0_px", "y0_px"]].to_numpy()
    mid = 0.5 * (c[0, 0] + c[1, 0])
    out = res.labels
    assert np.all(xx[out == 1] <= mid + 0.5) and np.all(xx[out == 2] >= mid - 0.5)
    # the overlap is shared, not left empty, and nothing beyond the contours is drawn
    assert np.any((out == 1) & (xx >= mid - 1)) and np.any((out == 2) & (xx <= mid + 1))
    union = sum(np.count_nonzero(out == k) for k in (1, 2))
    one = res.params.refined_area_px[0]
    assert 1.3 * one < union < 2 * one


def test_particle_at_image_edge_is_clipped():
    parts = [(2.5, 30.0, 4.0, 4.0, 0.0, 1.0)]
    z = render(parts=parts, shape=(60, 40))
    lab = rough_masks(parts=parts, shape=(60, 40), frac=0.6)
    res = refine_gaussian(z, lab)
    row = res.params.iloc[0]
    assert row.success, row.reason
    assert abs(row.x0_px - 2.5) < 0.3 and row.sigma_major_px == pytest.approx(4.0, rel=0.1)
    # drawn ellipse is clipped to the image, so fewer pixels than the analytic area
    assert 0 < row.drawn_area_px < row.refined_area_px


# -- table, units, empty input, validation -----------------------------------------------

def test_params_table_and_nm_columns():
    res = refine_gaussian(render(), rough_masks(frac=0.6), pixel_size_nm=0.25)
    df = res.params
    assert list(df.columns) == list(PARAM_COLUMNS)
    assert df.label.tolist() == [1, 2, 3, 4, 5]
    assert df.success.dtype == bool and df.label.dtype == np.int64
    assert np.allclose(df.diameter_nm, df.diameter_px * 0.25)
    assert np.allclose(df.refined_area_nm2, df.refined_area_px * 0.0625)
    assert np.allclose(df.sigma_major_nm, df.sigma_major_px * 0.25)
    no_scale = refine_gaussian(render(), rough_masks(frac=0.6)).params
    assert no_scale.diameter_nm.isna().all() and list(no_scale.columns) == list(PARAM_COLUMNS)


def test_empty_labels_give_empty_result():
    z = render()
    lab = np.zeros(SHAPE, np.int32)
    res = refine_gaussian(z, lab)
    assert res.n_fitted == 0 and res.n_failed == 0 and res.failed_labels == []
    assert isinstance(res.params, pd.DataFrame) and len(res.params) == 0
    assert list(res.params.columns) == list(PARAM_COLUMNS)
    assert np.array_equal(res.labels, lab) and res.labels is not lab
    assert res.summary() == "Gaussian refinement: no particles"


def test_non_consecutive_label_ids():
    lab = rough_masks(frac=0.6)
    lab[lab > 0] += 100
    res = refine_gaussian(render(), lab)
    assert res.params.label.tolist() == [101, 102, 103, 104, 105]
    assert set(np.unique(res.labels)) == {0, 101, 102, 103, 104, 105}


@pytest.mark.parametrize(
    "heights, labels, kwargs, match",
    [
        (np.zeros((4, 5, 3)), np.zeros((4, 5), int), {}, "heights must be a 2-D image"),
        (np.zeros((4, 5)), np.zeros((4, 5, 1), int), {}, "labels must be a 2-D label image"),
        (np.zeros((4, 5)), np.zeros((5, 4), int), {}, "same shape"),
        (np.zeros((4, 5)), np.zeros((4, 5), float), {}, "labels must be an integer"),
        (np.zeros((4, 5)), np.zeros((4, 5), bool), {}, "labels must be an integer"),
        (np.zeros((4, 5)), -np.ones((4, 5), int), {}, "must not be negative"),
        (np.zeros((4, 5), complex), np.zeros((4, 5), int), {}, "real numeric"),
        (np.zeros((4, 5), bool), np.zeros((4, 5), int), {}, "real numeric"),
        (np.zeros((4, 5)).tolist(), np.zeros((4, 5), int), {}, "numpy arrays"),
        (np.zeros((4, 5)), np.zeros((4, 5), int), {"level": 1.0}, "level must be between 0 and 1"),
        (np.zeros((4, 5)), np.zeros((4, 5), int), {"level": 0}, "level must be between 0 and 1"),
        (np.zeros((4, 5)), np.zeros((4, 5), int), {"margin": -1}, "margin"),
        (np.zeros((4, 5)), np.zeros((4, 5), int), {"pixel_size_nm": -0.1}, "pixel_size_nm"),
        (np.zeros((4, 5)), np.zeros((4, 5), int), {"max_iter": 0}, "max_iter"),
        (np.zeros((4, 5)), np.zeros((4, 5), int), {"background": "poly"}, "background"),
        (np.zeros((4, 5)), np.zeros((4, 5), int), {"polarity": "up"}, "polarity"),
        (np.zeros((4, 5)), np.zeros((4, 5), int), {"min_snr": -1}, "min_snr"),
    ],
)
def test_bad_inputs_raise_clear_errors(heights, labels, kwargs, match):
    with pytest.raises(NanodefectError, match=match):
        refine_gaussian(heights, labels, **kwargs)


# -- speed ---------------------------------------------------------------------------------

def test_about_a_thousand_particles_in_a_few_seconds():
    rng = np.random.default_rng(1)
    parts = []
    for cy in range(15, 990, 31):
        for cx in range(15, 990, 31):
            s = rng.uniform(2.5, 5.0)
            parts.append((cx + rng.uniform(-3, 3), cy + rng.uniform(-3, 3), s, s * rng.uniform(0.6, 1.0),
                          rng.uniform(-90, 90), rng.uniform(0.5, 1.5)))
    shape = (1000, 1000)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    z = 0.5 + rng.normal(0, 0.03, shape)
    lab = np.zeros(shape, np.int32)
    for i, p in enumerate(parts):                 # render locally: fast
        r0, c0 = int(p[1]) - 15, int(p[0]) - 15
        win = (slice(max(r0, 0), r0 + 31), slice(max(c0, 0), c0 + 31))
        g = np.exp(-0.5 * _q(xx[win], yy[win], p))
        z[win] += p[5] * g
        lab[win][np.exp(-0.5 * _q(xx[win], yy[win], p, (1.0, 0.0))) >= 0.6] = i + 1
    t = time.perf_counter()
    res = refine_gaussian(z, lab)
    elapsed = time.perf_counter() - t
    assert len(parts) == 1024
    assert res.n_fitted == 1024, res.params.reason.value_counts()
    assert (res.params.n_neighbours == 0).all()
    assert elapsed < 8.0, elapsed
    truth = np.array([(p[0], p[1], p[2], p[3]) for p in parts])
    got = res.params[["x0_px", "y0_px", "sigma_major_px", "sigma_minor_px"]].to_numpy()
    assert np.abs(got[:, :2] - truth[:, :2]).max() < 0.2
    assert np.abs(got[:, 2:] / truth[:, 2:] - 1).max() < 0.05
