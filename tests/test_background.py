"""Support flattening (core.segment.background): analytic fields, polarity, tiling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_nanodefect.core.evaluate import match_instances
from napari_nanodefect.core.segment import ModelConfig
from napari_nanodefect.core.segment.background import estimate_background
from napari_nanodefect.core.segment.model import LoadedModel
from napari_nanodefect.core.segment.predict import predict_array
from test_segment import LocalNet  # the local analytic "network" (tests/test_segment.py)


def _disks_on_support(shape=(300, 400), r=10, height=0.3, step=60):
    """Disks of radius ``r`` and height ``height`` on a ramp plus a broad bump (4x their height)."""
    H, W = shape
    yy, xx = np.mgrid[:H, :W]
    support = 0.002 * xx + 1.2 * np.exp(-((yy - H / 2) ** 2 + (xx - W / 2) ** 2) / (2 * 90.0**2))
    lab = np.zeros(shape, np.int32)
    img = support.copy()
    k = 1
    for cy in range(step // 2, H - r, step):
        for cx in range(step // 2, W - r, step):
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            img[m] += height
            lab[m] = k
            k += 1
    return img.astype(np.float32), support.astype(np.float32), lab


@pytest.mark.parametrize("polarity,size,tol", [("bright", 1.5, 0.15), (None, 3.0, 0.25)])
def test_background_recovers_support_and_particle_height(polarity, size, tol):
    img, support, lab = _disks_on_support()
    bg = estimate_background(img, 20, polarity, size)
    flat = bg.subtract(img)
    # the support (a bump 4x the particle height on a ramp) is gone: to within 15 % (opening)
    # or 25 % (median) of a particle's height everywhere (both clip the bump's curved top
    # a little), 5 % on the median pixel
    err = np.abs(flat - (img - support))[lab == 0]
    assert err.max() < tol * 0.3 and np.median(err) < 0.05 * 0.3
    heights = ndi.median(flat, lab, np.arange(1, lab.max() + 1))
    assert np.allclose(heights, 0.3, atol=tol * 0.3)
    # dark particles: a closing (or the median) of the negated image is the same field, negated
    bgd = estimate_background(-img, 20, "dark" if polarity else None, size)
    assert np.allclose(bgd.subtract(-img), -flat, atol=1e-4)


def test_background_windows_equal_whole_and_coarse_grid_is_bounded():
    img, _, _ = _disks_on_support((700, 900))
    bg = estimate_background(img, 20, "bright", max_side=128)
    assert max(bg.field.shape) <= 128 and bg.factor == 8  # ceil(900 / 128)
    whole = bg.window(0, 700, 0, 900)
    assert np.array_equal(bg.window(123, 456, 77, 650), whole[123:456, 77:650])
    with pytest.raises(ValueError, match="polarity"):
        estimate_background(img, 20, "grey")


def _model(**cfg):
    return LoadedModel(LocalNet().eval(), ModelConfig(**cfg), None, torch.device("cpu"))


def test_flattening_finds_particles_on_a_bright_bump_and_tiles_agree():
    img, _, lab = _disks_on_support((600, 800), r=10, step=50)
    common = dict(tile_size=128, tile_overlap=48, min_area_px=4, contrast_ring_px=0, object_diameter_px=20)
    plain = predict_array(_model(**common), img, scale=1.0)
    flat_model = _model(background_size=3.0, **common)
    flat = predict_array(flat_model, img, scale=1.0)
    whole = predict_array(flat_model, img, scale=1.0, tile_size=2048, overlap=0)
    # without flattening the bump is read as one object (or the particles on it are lost)
    assert match_instances(lab, plain.labels, 0.5)["f1"] < 0.8
    m = match_instances(lab, flat.labels, 0.5)
    assert m["f1"] == 1.0, m
    assert match_instances(whole.labels, flat.labels, 0.9)["f1"] == 1.0


def test_training_regions_are_flattened_and_models_inherit_the_setting(tmp_path):
    from napari_nanodefect.core.annotations import Crop, LabelImage, labels_to_set
    from napari_nanodefect.core.segment.data import build_regions
    from napari_nanodefect.core.segment.train import TrainingImage, train

    img, support, lab = _disks_on_support((300, 400), r=10, step=60)
    aset = labels_to_set(LabelImage(lab, {i: "particle" for i in range(1, lab.max() + 1)}))
    aset.crops = [Crop(0, 0, 400, 300)]
    plain = build_regions(aset, img, {"particle": 0}, 1.0)[0]
    flat = build_regions(aset, img, {"particle": 0}, 1.0, background=estimate_background(img, 20, None, 3.0))[0]
    # in the normalised region the support spread shrinks (the bump is 4x the particles'
    # height) and the particles stand higher above it
    bgp, bgf = plain.image[plain.fg == 0], flat.image[flat.fg == 0]
    assert np.std(bgf) < 0.25 * np.std(bgp)
    gap = lambda r: np.median(r.image[r.fg > 0]) - np.median(r.image[r.fg == 0])  # noqa: E731
    assert gap(flat) > 2 * gap(plain)

    tiny = ModelConfig(encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 8), background_size=3.0)
    item = TrainingImage(aset, img, None)
    kw = dict(epochs=1, batch_size=2, patch=64, validate_every_s=1e9)
    a = train([item], tmp_path / "a", base=None, config=tiny, **kw)
    assert a.model.config.background_size == 3.0
    b = train([item], tmp_path / "b", base=tmp_path / "a", **kw)  # fine-tuning keeps the base's setting
    assert b.model.config.background_size == 3.0
    c = train([item], tmp_path / "c", base=tmp_path / "a", background_size=0, **kw)
    assert c.model.config.background_size == 0.0
    assert '"background_size": 0.0' in (tmp_path / "c" / "config.json").read_text()
