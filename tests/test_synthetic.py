"""The procedural micrograph generator: exact ground truth, arrangement, polarity, speed."""

import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_nanodefect.core.synthetic import (
    MODES,
    SyntheticImage,
    make_particles,
    random_micrograph,
)


def _areas(labels):
    return np.bincount(labels.ravel())[1:]


def _adjacent_pairs(labels):
    """Pairs of different labels that are 8-neighbours (no background pixel between them)."""
    pairs = set()
    lab = labels.astype(np.int64)
    h, w = lab.shape
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = lab[0:h - dy, max(0, -dx):w - max(0, dx)]
        b = lab[dy:h, max(0, dx):w - max(0, -dx)]
        m = (a > 0) & (b > 0) & (a != b)
        pairs |= {tuple(sorted(p)) for p in zip(a[m].tolist(), b[m].tolist())}
    return pairs


def _interior(labels):
    """Labels that do not touch the image border."""
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.setdiff1d(np.arange(1, labels.max() + 1), border)


def _check_exact(s: SyntheticImage):
    n = int(s.labels.max())
    assert s.labels.dtype == np.uint16 and s.labels.shape == s.image.shape
    assert sorted(s.classes) == list(range(1, n + 1))
    area = _areas(s.labels)
    assert len(area) == n and (area > 0).all()  # every label is drawn, none fully hidden
    np.testing.assert_allclose(s.diameters_nm, 2 * np.sqrt(area / np.pi) * s.pixel_size_nm, rtol=1e-12)
    assert len(s.drawn_diameters_nm) == n


def test_deterministic_by_seed():
    a = make_particles(shape=(128, 160), n=30, seed=7, overlap=0.2, single_sites=5)
    b = make_particles(shape=(128, 160), n=30, seed=7, overlap=0.2, single_sites=5)
    c = make_particles(shape=(128, 160), n=30, seed=8, overlap=0.2, single_sites=5)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert a.classes == b.classes and np.array_equal(a.diameters_nm, b.diameters_nm)
    assert not np.array_equal(a.labels, c.labels)
    r1, r2 = random_micrograph(11), random_micrograph(11)
    assert np.array_equal(r1.image, r2.image) and np.array_equal(r1.labels, r2.labels)
    assert r1.params == r2.params
    g1 = random_micrograph(np.random.default_rng(3))
    g2 = random_micrograph(np.random.default_rng(3))
    assert np.array_equal(g1.labels, g2.labels)


@pytest.mark.parametrize("kw", [
    {},
    {"mode": "bf", "touching": 0.5, "faceted": 1.0},
    {"mode": "sem", "overlap": 0.4, "clustered": 0.6},
    {"mode": "stm", "single_sites": 20, "packing": 1.0, "n": 200},
    {"dtype": "uint16", "jpeg_quality": 80, "support": "silica", "support_coverage": 0.6},
])
def test_label_areas_give_diameters_exactly(kw):
    base = {"shape": (192, 224), "n": 60, "median_diameter_nm": 6.0, "pixel_size_nm": 0.4, "seed": 2}
    s = make_particles(**{**base, **kw})
    _check_exact(s)
    assert s.labels.max() >= 20
    # particles may be cut by the border: some labels reach it
    assert len(_interior(s.labels)) < s.labels.max()


def test_median_diameter_of_unclipped_particles():
    s = make_particles(shape=(512, 512), n=300, median_diameter_nm=8.0, sigma=0.25, pixel_size_nm=0.5,
                       touching=0.0, seed=5)
    inner = _interior(s.labels)
    assert len(inner) > 200
    assert np.median(s.diameters_nm[inner - 1]) == pytest.approx(8.0, rel=0.1)
    assert np.median(s.drawn_diameters_nm) == pytest.approx(8.0, rel=0.1)
    # log-normal spread: sigma of log(d) close to the requested 0.25
    assert np.std(np.log(s.diameters_nm[inner - 1])) == pytest.approx(0.25, abs=0.06)


def test_touching_and_separated_particles():
    touch = make_particles(shape=(256, 256), n=80, median_diameter_nm=8.0, pixel_size_nm=0.5, touching=0.5, seed=1)
    pairs = _adjacent_pairs(touch.labels)
    assert len(pairs) >= 15
    # touching labels are adjacent without a gap, and still distinct objects
    for lab in range(1, touch.labels.max() + 1):
        assert ndi.label(touch.labels == lab)[1] == 1
    for kw in ({"clustered": 0.8}, {"packing": 1.0, "packing_gap": 0.1}, {}):
        sep = make_particles(shape=(256, 256), n=120, median_diameter_nm=8.0, pixel_size_nm=0.5,
                             touching=0.0, overlap=0.0, seed=1, **kw)
        assert sep.labels.max() > 40
        assert _adjacent_pairs(sep.labels) == set()


def test_overlap_later_particle_owns_the_overlap():
    s = make_particles(shape=(256, 256), n=80, median_diameter_nm=10.0, pixel_size_nm=0.5, touching=0.0,
                       overlap=0.5, seed=4)
    _check_exact(s)
    inner = _interior(s.labels)
    area = _areas(s.labels)[inner - 1]
    drawn = np.pi * (s.drawn_diameters_nm[inner - 1] / s.pixel_size_nm / 2) ** 2
    ratio = area / drawn
    assert (ratio < 0.85).sum() >= 5  # occluded: smaller than the drawn outline
    assert ratio.min() > 0.5  # never loses much more than 40 % (plus rasterisation)
    assert len(_adjacent_pairs(s.labels)) >= 10
    for lab in range(1, s.labels.max() + 1):  # never split in two
        assert ndi.label(s.labels == lab)[1] == 1


@pytest.mark.parametrize("mode,sign", [("haadf", 1), ("bf", -1), ("sem", -1), ("stm", 1)])
def test_polarity(mode, sign):
    s = make_particles(shape=(256, 256), n=60, median_diameter_nm=8.0, pixel_size_nm=0.5, mode=mode, seed=3)
    fg = s.labels > 0
    diff = s.image[fg].mean() - s.image[~fg].mean()
    assert sign * diff > 30


def test_stm_scan_lines_change_row_means():
    kw = {"shape": (256, 256), "n": 30, "median_diameter_nm": 8.0, "pixel_size_nm": 0.5, "mode": "stm", "seed": 9, "streaks": 0.0}
    clean = make_particles(row_noise=0.0, **kw).image.astype(float)
    lines = make_particles(row_noise=0.3, **kw).image.astype(float)

    def row_jumps(im):  # row-to-row change of the row means, relative to the image spread
        return np.median(np.abs(np.diff(im.mean(1)))) / im.std()

    assert row_jumps(lines) > 3 * row_jumps(clean)


def test_uint16_and_jpeg():
    s = make_particles(shape=(128, 128), n=20, dtype="uint16", seed=1)
    assert s.image.dtype == np.uint16 and s.image.max() > 255
    j = make_particles(shape=(128, 128), n=20, jpeg_quality=60, seed=1)
    p = make_particles(shape=(128, 128), n=20, seed=1)
    assert j.image.dtype == np.uint8 and not np.array_equal(j.image, p.image)
    assert np.array_equal(j.labels, p.labels)
    assert np.abs(j.image.astype(int) - p.image).mean() < 12
    with pytest.raises(ValueError):
        make_particles(shape=(32, 32), n=2, dtype="float32")
    with pytest.raises(ValueError):
        make_particles(shape=(32, 32), n=2, mode="xray")


def test_single_sites_class():
    s = make_particles(shape=(256, 256), n=40, median_diameter_nm=8.0, pixel_size_nm=0.5, single_sites=30, seed=2)
    _check_exact(s)
    names = np.array([s.classes[i] for i in range(1, s.labels.max() + 1)])
    assert set(names) == {"particle", "single_site"}
    area = _areas(s.labels)
    sites = area[names == "single_site"]
    assert 25 <= len(sites) <= 30
    assert sites.min() >= 2 and sites.max() <= 13  # 2-4 px dots
    assert area[names == "particle"].min() > sites.max()
    # single sites are visible bright dots on the support
    site_px = np.isin(s.labels, np.flatnonzero(names == "single_site") + 1)
    assert s.image[site_px].mean() > s.image[s.labels == 0].mean() + 10


def test_random_micrograph_is_fast_and_in_range():
    random_micrograph(0)  # warm up
    times, modes = [], set()
    for seed in range(24):
        t = time.perf_counter()
        s = random_micrograph(seed)
        times.append(time.perf_counter() - t)
        modes.add(s.params["mode"])
        _check_exact(s)
        assert s.image.shape == s.labels.shape == (256, 256) and s.image.dtype == np.uint8
        assert s.image.std() > 5
        d_px = s.params["median_diameter_nm"] / s.params["pixel_size_nm"]
        assert 5 <= d_px <= 80 and 0.02 <= s.params["pixel_size_nm"] <= 2.0
        assert s.params["mode"] in MODES and 1 <= s.params["n"] <= 300
        assert s.labels.max() >= 1 and set(s.classes.values()) <= {"particle", "single_site"}
        fg = s.labels > 0
        sign = -1 if s.params["mode"] in ("bf", "sem") else 1
        assert sign * (s.image[fg].mean() - s.image[~fg].mean()) > 0
    assert max(times) < 0.5 and np.mean(times) < 0.1
    assert modes == set(MODES)
    big = random_micrograph(1, shape=(96, 128), mode="bf")
    assert big.image.shape == (96, 128) and big.params["mode"] == "bf"


def test_make_particles_keeps_the_old_call():
    s = make_particles(shape=(256, 256), n=50, median_diameter_nm=12.0, sigma=0.25, pixel_size_nm=0.5,
                       mode="haadf", noise=0.06, seed=0, touching=0.2)
    _check_exact(s)
    assert s.image.dtype == np.uint8 and set(s.classes.values()) == {"particle"}
    assert s.labels.max() == 50


def test_support_clouds_are_soft_unlabelled_clumps():
    """``clouds``: particle-sized bright clumps of the support, never labelled, whose tops
    reach about ``clouds`` x a particle's peak signal, with much softer edges than particles."""
    kw = dict(shape=(384, 384), n=12, median_diameter_nm=10.0, sigma=0.1, pixel_size_nm=0.5, mode="haadf",
              noise=0.0, dose=None, seed=4, support_level=0.3, support_texture=0.05, gradient=0.0, blur=0.8,
              clip_percentiles=(0.0, 100.0), dtype="uint16", cloud_size=2.5)
    out = {}
    for c in (0.0, 0.6):
        s = make_particles(clouds=c, **kw)
        _check_exact(s)
        img = s.image.astype(np.float64)
        fg = ndi.binary_dilation(s.labels > 0, iterations=6)
        bg = img[~fg]
        peaks = ndi.maximum(img, s.labels, np.arange(1, s.labels.max() + 1))
        base = np.percentile(bg, 2)
        # relief of the bare support against the particle peaks
        out[c] = (np.percentile(bg, 99.5) - base) / (np.median(peaks) - base)
        gy, gx = np.gradient(img)
        g = np.hypot(gy, gx)
        edge = ndi.binary_dilation(s.labels > 0, iterations=1) & ~ndi.binary_erosion(s.labels > 0, iterations=1)
        out[(c, "grad")] = np.percentile(g[~fg], 99) / np.median(g[edge])
        assert s.labels.max() == 12
    assert out[0.0] < 0.15
    assert 0.3 < out[0.6] < 0.9
    # per unit of height, cloud flanks are about half as steep as particle edges (0.52 measured)
    assert out[(0.6, "grad")] / out[0.6] < 0.7


def _radial_peak_period(img):
    """The period (px) of the strongest ring in the power spectrum, beyond the lowest frequencies."""
    a = img.astype(float) - img.mean()
    p = np.abs(np.fft.fft2(a)) ** 2
    h, w = a.shape
    ky, kx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    k = np.hypot(ky, kx)
    bins = np.arange(0.02, 0.5, 0.005)
    idx = np.digitize(k.ravel(), bins)
    prof = np.bincount(idx, p.ravel(), minlength=len(bins) + 1)[1:len(bins)] / np.maximum(
        np.bincount(idx, minlength=len(bins) + 1)[1:len(bins)], 1)
    kc = 0.5 * (bins[:-1] + bins[1:])
    return 1.0 / kc[int(np.argmax(prof))]


@pytest.mark.parametrize("period", [4.0, 8.0])
def test_phase_contrast_speckle_has_the_requested_period(period):
    # a carbon film without particles' signal in the way: the worm-like texture's ring
    s = make_particles(shape=(256, 256), n=1, median_diameter_nm=2.0, pixel_size_nm=0.1, mode="bf", seed=1,
                       support="carbon", support_texture=0.05, speckle=0.3, speckle_period_px=period,
                       speckle_band=0.2, blur=0.0, gradient=0.0, dose=None, noise=0.0, halo=0.0)
    assert _radial_peak_period(s.image) == pytest.approx(period, rel=0.15)


def test_hrtem_draws_are_faint_particles_in_strong_texture():
    rows = []
    for seed in range(400):
        s = random_micrograph(seed, shape=(64, 64))
        if s.params.get("speckle_period_px") is not None:
            rows.append(s.params)
    # bright-field is 30 % of the draws, half of those with particles >= 12 px become HRTEM
    assert 0.05 < len(rows) / 400 < 0.2
    for p in rows:
        d_px = p["median_diameter_nm"] / p["pixel_size_nm"]
        assert p["mode"] == "bf" and p["support"] == "carbon" and d_px >= 12
        assert 2.5 <= p["speckle_period_px"] <= 0.3 * d_px + 1e-9
        ts = np.exp(-0.35 * p["support_level"])
        delta = ts * (1 - np.exp(-0.5 * p["contrast"]))  # a median particle's absorption signal
        assert 0.3 * delta - 1e-9 <= p["speckle"] <= 1.0 * delta + 1e-9


def test_crowded_bright_field_draws():
    crowded, other_bf = [], []
    for seed in range(300):
        s = random_micrograph(seed, shape=(128, 128))
        p = s.params
        if p["scene"] == "crowded_bf":
            crowded.append(s)
        elif p["scene"] == "bf":
            other_bf.append(s)
        else:
            assert p["scene"] in ("haadf", "sem", "stm", "hrtem")
            assert (p["scene"] == "hrtem") == (p.get("speckle_period_px") is not None)
    # bright field is 30 % of the draws; about a quarter of those are crowded
    assert 0.03 < len(crowded) / 300 < 0.13
    for s in crowded:
        p = s.params
        assert p["mode"] == "bf" and p["median_diameter_nm"] / p["pixel_size_nm"] >= 8
        assert 0.35 <= p["sigma"] <= 0.6 and 0.1 <= p["overlap"] <= 0.35 and 0.3 <= p["brightness_spread"] <= 0.6
        assert 0.5 <= p["clustered"] <= 0.9 and p["packing"] == 0.0
    # they are crowded: far more of the image inside particles than in the other bright-field draws
    cover = [float((s.labels > 0).mean()) for s in crowded]
    cover_other = [float((s.labels > 0).mean()) for s in other_bf]
    assert np.median(cover) > 1.5 * np.median(cover_other)


def _particle_contrasts(s) -> np.ndarray:
    """Peak (lightly smoothed) signal of each particle above the median of a 2-px ring around it."""
    img = s.image.astype(np.float64)
    lab = s.labels
    ids = np.unique(lab[lab > 0])
    ring = ndi.grey_dilation(lab, size=5)
    ring[lab > 0] = 0
    peak = ndi.maximum(ndi.gaussian_filter(img, 1.0), lab, ids)
    return np.asarray(peak) - np.asarray(ndi.median(img, ring, ids))


def test_size_contrast_exponent_and_visibility_floor():
    kw = dict(shape=(256, 256), n=60, median_diameter_nm=8.0, sigma=0.45, pixel_size_nm=0.5, noise=0.0, dose=None,
              blur=0.3, brightness_spread=0.0, support_texture=0.0, support_level=0.1, gradient=0.0, touching=0.0,
              clouds=0.0, clip_percentiles=(0.0, 100.0), dtype="uint16", seed=3)
    flat = make_particles(size_contrast_exponent=0.0, **kw)
    steep = make_particles(size_contrast_exponent=1.2, **kw)
    assert np.array_equal(flat.labels, steep.labels)  # same particles, only their brightness differs
    d = flat.diameters_nm
    # no noise, same particles: each particle's signal relative to its flat rendering is
    # its size factor (times one global display factor)
    c0 = _particle_contrasts(flat)
    r1 = _particle_contrasts(steep) / c0
    from scipy.stats import spearmanr

    assert spearmanr(d, r1)[0] > 0.8  # brighter with size
    assert np.min(r1) < 0.6 * np.median(r1)  # the small ones are faint
    # ... but never below a quarter of a median particle (without the floor the smallest
    # would be ~0.03 of the median at exponent 4)
    r4 = _particle_contrasts(make_particles(size_contrast_exponent=4.0, **kw)) / c0
    assert 0.18 < np.min(r4) / np.median(r4) < 0.4


def test_faint_haadf_scene_is_opt_in():
    # off by default: the draws are exactly those without the keyword (the fine-tune's rehearsal)
    for seed in range(6):
        a, b = random_micrograph(seed, shape=(64, 64)), random_micrograph(seed, shape=(64, 64), faint_haadf=0.0)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
        assert a.params["scene"] != "faint_haadf"
    scenes, faint = [], []
    for seed in range(120):
        s = random_micrograph(seed, shape=(64, 64), faint_haadf=1.0)
        scenes.append(s.params["scene"])
        if s.params["scene"] == "faint_haadf":
            faint.append(s.params)
    assert "haadf" not in scenes  # with fraction 1 every HAADF draw is faint
    assert 0.3 < len(faint) / 120 < 0.6  # HAADF is 45 % of the draws
    for p in faint:
        assert p["mode"] == "haadf"
        assert 0.4 <= p["brightness_spread"] <= 0.8 and 1.0 <= p["size_contrast_exponent"] <= 1.6
    # the same seed with and without the scene: same mode, lower noise
    for seed in range(120):
        a = random_micrograph(seed, shape=(64, 64))
        if a.params["mode"] != "haadf":
            continue
        b = random_micrograph(seed, shape=(64, 64), faint_haadf=1.0)
        assert b.params["scene"] == "faint_haadf"
        assert b.params["noise"] == pytest.approx(0.6 * a.params["noise"])
        break
    else:
        raise AssertionError("no HAADF draw among 120 seeds")
