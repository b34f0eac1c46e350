"""Click-to-label proposals (core.annotations.propose) on synthetic micrographs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_nanodefect.core.annotations.propose import (
    Proposal,
    estimate_diameter,
    propose_object,
)
from napari_nanodefect.core.errors import NanodefectError
from napari_nanodefect.core.synthetic import make_particles


def full_mask(p: Proposal, shape) -> np.ndarray:
    out = np.zeros(shape, bool)
    out[p.bbox()] = p.mask
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def disks_image(shape, disks, bg=0.2, noise=0.03, blur=1.0, seed=0):
    """Flat-topped disks ``(cy, cx, r, amplitude)`` (pixel-centre test), blurred, noisy.
    Returns the image and the truth masks (later disks own the overlap)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    sig = np.full(shape, bg, np.float64)
    truth = []
    for cy, cx, r, a in disks:
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        sig[m] = bg + a
        for t in truth:
            t &= ~m
        truth.append(m)
    img = ndi.gaussian_filter(sig, blur) + np.random.default_rng(seed).normal(0, noise, shape)
    return img, truth


def isolated(s, limit=None):
    """(mask, centroid) of particles with no other label within 2 px and off the border."""
    lab = s.labels.astype(np.int32)
    H, W = lab.shape
    out = []
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None or s.classes[i] != "particle":
            continue
        if sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == H or sl[1].stop == W:
            continue
        m = lab == i
        ring = ndi.binary_dilation(m, iterations=2) & ~m
        if (lab[ring] > 0).any():
            continue
        out.append((m, ndi.center_of_mass(m)))
    return out[:limit]


def median_diameter_px(s) -> float:
    return float(np.median(s.diameters_nm / s.pixel_size_nm))


# -- accuracy on synthetic micrographs -----------------------------------------------------


@pytest.mark.parametrize("mode", ["haadf", "bf"])
def test_isolated_particles_high_iou_with_and_without_a_diameter(mode):
    # haadf: bright particles on dark carbon; bf: dark particles (with a Fresnel halo) on bright
    s = make_particles(shape=(512, 512), mode=mode, seed=1)
    parts = isolated(s, limit=40)
    assert len(parts) >= 25
    d = median_diameter_px(s)
    for diameter in (d, None):
        ious, sizes = [], []
        for m, c in parts:
            p = propose_object(s.image, c, diameter_px=diameter)
            assert p.method == "threshold" and p.mask.dtype == bool
            ious.append(iou(full_mask(p, m.shape), m))
            sizes.append(p.diameter_px / (2 * np.sqrt(m.sum() / np.pi)))
        # measured: median IoU 0.965 / 0.962 (haadf, with / without the diameter), 0.94 / 0.93 (bf);
        # 10th percentile 0.93 (haadf), 0.89 (bf)
        assert np.median(ious) >= 0.9, (mode, diameter, np.median(ious))
        assert np.percentile(ious, 10) >= 0.8, (mode, diameter, np.percentile(ious, 10))
        assert 0.93 <= np.median(sizes) <= 1.07


def test_polarity_is_decided_at_the_click_and_can_be_forced():
    s = make_particles(shape=(384, 384), mode="bf", seed=2)
    m, c = isolated(s)[0]
    d = median_diameter_px(s)
    auto = propose_object(s.image, c, diameter_px=d)
    dark = propose_object(s.image, c, diameter_px=d, polarity="dark")
    assert iou(full_mask(auto, m.shape), m) >= 0.8
    assert np.array_equal(full_mask(auto, m.shape), full_mask(dark, m.shape))
    # forced to the wrong polarity, the dark particle is not outlined
    try:
        wrong = propose_object(s.image, c, diameter_px=d, polarity="bright")
    except NanodefectError:
        pass
    else:
        assert iou(full_mask(wrong, m.shape), m) < 0.3
    assert estimate_diameter(s.image, c)[1] == -1
    assert estimate_diameter(255 - s.image, c)[1] == 1


@pytest.mark.parametrize("gap, amps", [(21, (1.0, 1.0)), (21, (1.0, 0.45)), (18, (1.0, 1.0))],
                         ids=["touching", "touching-unequal", "overlapping"])
def test_touching_disks_give_one_disk_each(gap, amps):
    r = 10
    disks = [(40, 40, r, amps[0]), (40, 40 + gap, r, amps[1])]
    img, truth = disks_image((80, 100), disks)
    props = []
    for (cy, cx, _, _), t in zip(disks, truth):
        for diameter in (2 * r, None):
            p = propose_object(img, (cy, cx), diameter_px=diameter)
            mk = full_mask(p, img.shape)
            assert iou(mk, t) >= 0.8, (gap, amps, diameter, iou(mk, t))
            if diameter:
                props.append(mk)
    assert not (props[0] & props[1]).any()


def test_labelled_pixels_are_never_included():
    r = 10
    disks = [(40, 40, r, 1.0), (40, 61, r, 1.0)]
    img, (left, right) = disks_image((80, 100), disks)
    labels = np.zeros(img.shape, np.int32)
    labels[left] = 1
    # the neighbour is labelled: the new particle stops at it
    p = propose_object(img, (40, 61), diameter_px=2 * r, labels=labels)
    mk = full_mask(p, img.shape)
    assert not (mk & (labels > 0)).any()
    assert iou(mk, right) >= 0.85
    # half of the clicked particle is labelled: only the free half is proposed
    labels2 = np.zeros(img.shape, np.int32)
    top = right & (np.arange(img.shape[0])[:, None] < 40)
    labels2[top] = 7
    p2 = propose_object(img, (44, 61), labels=labels2)
    mk2 = full_mask(p2, img.shape)
    assert not (mk2 & top).any()
    assert (mk2 & right & ~top).sum() >= 0.8 * (right & ~top).sum()
    assert (mk2 & ~right).sum() <= 0.2 * mk2.sum()
    # a click on a labelled particle: the caller's business, but never its pixels
    try:
        p3 = propose_object(img, (40, 40), diameter_px=2 * r, labels=labels)
    except NanodefectError:
        pass
    else:
        assert not (full_mask(p3, img.shape) & (labels > 0)).any()
    with pytest.raises(NanodefectError, match="labels"):
        propose_object(img, (40, 61), labels=labels[:10])


def test_stm_float_height_map_with_negative_background():
    s = make_particles(shape=(384, 384), mode="stm", dtype="uint16", seed=3)
    heights = s.image.astype(np.float64) / 65535.0 * 4.0 - 2.5  # nm, support below zero
    assert np.median(heights) < 0
    parts = isolated(s, limit=25)
    d = median_diameter_px(s)
    for diameter in (d, None):
        ious = []
        for m, c in parts:
            try:
                ious.append(iou(full_mask(propose_object(heights, c, diameter_px=diameter), m.shape), m))
            except NanodefectError:  # one particle here is barely above the scan noise
                ious.append(0.0)
        # measured: median 0.945 (with the diameter) and 0.94 (without)
        assert np.median(ious) >= 0.9, (diameter, np.median(ious))
        assert np.mean(np.array(ious) >= 0.7) >= 0.85, (diameter, ious)


@pytest.mark.parametrize("centre", [(3, 4), (0, 50), (50, 99)], ids=["corner", "top", "right"])
def test_particle_cut_by_the_image_border(centre):
    img, (t,) = disks_image((100, 100), [(*centre, 9, 1.0)])
    click = (min(max(centre[0], 2), 97), min(max(centre[1], 2), 97))
    for diameter in (18, None):
        p = propose_object(img, click, diameter_px=diameter)
        assert iou(full_mask(p, img.shape), t) >= 0.8  # measured 0.87-0.93


def test_result_does_not_depend_on_dtype_or_offset():
    s = make_particles(shape=(256, 256), mode="haadf", seed=4)
    m, c = isolated(s)[0]
    base = full_mask(propose_object(s.image, c), m.shape)
    for img in (s.image.astype(np.uint16) * 257, s.image.astype(np.float32) * 0.01 - 3.0):
        before = img.copy()
        other = full_mask(propose_object(img, c), m.shape)
        assert iou(base, other) >= 0.98
        assert np.array_equal(img, before)  # the caller's image is not modified


def test_estimate_diameter_of_disks():
    for r in (5, 10, 20):
        img, _ = disks_image((160, 160), [(80, 80, r, 1.0)])
        d, sign = estimate_diameter(img, (80, 80))
        assert sign == 1
        assert 0.75 * 2 * r <= d <= 1.25 * 2 * r, (r, d)
        # off-centre clicks see the same blob
        d2, _ = estimate_diameter(img, (80 + r / 2, 80))
        assert 0.75 * 2 * r <= d2 <= 1.3 * 2 * r, (r, d2)


# -- refusals ------------------------------------------------------------------------------


def test_click_on_empty_background_raises():
    rng = np.random.default_rng(5)
    flat = rng.normal(100.0, 5.0, (200, 200))
    for diameter in (15.0, None):
        with pytest.raises(NanodefectError, match="no .*particle|no closed object"):
            propose_object(flat, (100, 100), diameter_px=diameter)
    with pytest.raises(NanodefectError, match="flat"):
        propose_object(np.zeros((50, 50), np.uint8), (25, 25), diameter_px=10)
    # the textured carbon support of a synthetic HAADF image, far from every particle
    s = make_particles(shape=(512, 512), mode="haadf", seed=6)
    d = median_diameter_px(s)
    far = ndi.distance_transform_edt(s.labels == 0) > d
    yy, xx = np.nonzero(far)
    pick = np.random.default_rng(0).choice(len(yy), 30, replace=False)
    for diameter in (d, None):
        refused = 0
        for k in pick:
            try:
                propose_object(s.image, (yy[k], xx[k]), diameter_px=diameter)
            except NanodefectError:
                refused += 1
        assert refused >= 27, (diameter, refused)  # measured: 30/30 and 30/30


@pytest.mark.parametrize("point", [(-1.0, 10.0), (10.0, 64.0), (63.6, 10.0), (10.0, -0.51),
                                   (float("nan"), 3.0), (1.0, 2.0, 3.0), "x"])
def test_point_outside_the_image_or_invalid_raises(point):
    img, _ = disks_image((64, 64), [(32, 32, 8, 1.0)])
    with pytest.raises(NanodefectError, match="point"):
        propose_object(img, point)


def test_invalid_arguments_raise():
    img, _ = disks_image((64, 64), [(32, 32, 8, 1.0)])
    with pytest.raises(NanodefectError, match="polarity"):
        propose_object(img, (32, 32), polarity="up")
    with pytest.raises(NanodefectError, match="diameter"):
        propose_object(img, (32, 32), diameter_px=0)
    with pytest.raises(NanodefectError, match="2-D"):
        propose_object(np.zeros((4, 4, 3)), (1, 1))
    # pixel centres at integers: (-0.4, 31.6) is pixel (0, 32), inside
    p = propose_object(img, (31.6, 32.4), diameter_px=16)
    assert p.mask[32 - p.offset[0], 32 - p.offset[1]]


def test_proposal_indices_and_bbox_agree():
    img, (t,) = disks_image((90, 120), [(50, 70, 9, 1.0)])
    p = propose_object(img, (50, 70))
    rows, cols = p.indices()
    sl = p.bbox()
    assert p.offset == (sl[0].start, sl[1].start)
    assert rows.min() >= sl[0].start and rows.max() < sl[0].stop
    assert cols.min() >= sl[1].start and cols.max() < sl[1].stop
    lab = np.zeros(img.shape, np.int32)
    lab[sl][p.mask] = 3
    assert np.array_equal(np.nonzero(lab == 3), (rows, cols))
    assert abs(p.diameter_px - 2 * np.sqrt(t.sum() / np.pi)) <= 0.1 * p.diameter_px
    assert p.area_px == len(rows)
    # the window is small: 5 diameters, not the image
    assert p.mask.shape[0] <= 5 * 18 + 1 and p.mask.shape[1] <= 5 * 18 + 1


# -- model method --------------------------------------------------------------------------


def _fake_model(constant: float | None = None):
    """A 'network' that thresholds its (normalised) input: foreground = distance = x > 0.5.
    With ``constant`` it answers that logit everywhere."""
    import torch

    from napari_nanodefect.core.segment import LoadedModel, ModelConfig

    class Net(torch.nn.Module):
        def forward(self, x):
            if constant is not None:
                return torch.full((x.shape[0], 2, *x.shape[2:]), float(constant))
            logit = 30.0 * (x - 0.5)
            return torch.cat([logit, logit], dim=1)

    return LoadedModel(module=Net().eval(), config=ModelConfig(object_diameter_px=20.0), device=torch.device("cpu"))


def test_model_method_returns_the_instance_under_the_click(monkeypatch):
    import napari_nanodefect.core.segment.predict as predict_mod

    disks = [(40, 40, 10, 1.0), (40, 80, 7, 1.0), (90, 60, 12, 1.0)]
    img, truth = disks_image((130, 130), disks, noise=0.02)
    seen = []
    real = predict_mod.predict_array

    def spy(model, image, **kw):
        seen.append((image.shape, kw))
        return real(model, image, **kw)

    monkeypatch.setattr(predict_mod, "predict_array", spy)
    model = _fake_model()
    for (cy, cx, r, _), t in zip(disks, truth):
        p = propose_object(img, (cy + 2, cx - 1), diameter_px=2 * r, model=model)
        assert p.method == "model"
        assert iou(full_mask(p, img.shape), t) >= 0.8
    assert seen[0][1]["scale"] == pytest.approx(20.0 / 20.0)
    assert seen[1][1]["scale"] == pytest.approx(20.0 / 14.0)
    # labelled pixels are removed from the model's instance
    labels = np.zeros(img.shape, np.int32)
    labels[30:40, :] = 1
    p = propose_object(img, (45, 40), diameter_px=20, model=model, labels=labels)
    mk = full_mask(p, img.shape)
    assert p.method == "model" and not (mk & (labels > 0)).any() and mk[45, 40]
    # pixel sizes known on both sides set the scale
    model.config.pixel_size_nm = 0.25
    propose_object(img, (40, 40), model=model, pixel_size_nm=0.5)
    assert seen[-1][1]["scale"] == pytest.approx(2.0)


def test_model_that_finds_nothing_falls_back_to_threshold():
    img, (t,) = disks_image((100, 100), [(50, 50, 10, 1.0)])
    p = propose_object(img, (50, 50), diameter_px=20, model=_fake_model(constant=-10.0))
    assert p.method == "threshold"
    assert iou(full_mask(p, img.shape), t) >= 0.85


def test_starter_model_proposal():
    from napari_nanodefect.core.segment import default_model_dir, load_model

    model = load_model(default_model_dir(), device="cpu")
    s = make_particles(shape=(384, 384), mode="haadf", seed=1)
    parts = isolated(s, limit=3)
    d = median_diameter_px(s)
    ious = []
    for m, c in parts:
        p = propose_object(s.image, c, diameter_px=d, model=model)
        assert p.method in ("model", "threshold")
        mk = full_mask(p, m.shape)
        assert mk[tuple(int(round(v)) for v in c)]
        ious.append(iou(mk, m))
    # the starter model's outlines run ~20 % large on these images (median IoU ~0.7)
    assert np.median(ious) >= 0.5, ious
