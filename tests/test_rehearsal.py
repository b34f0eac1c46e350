"""Synthetic rehearsal during fine-tuning (core.segment.rehearsal)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from napari_nanodefect.core.annotations import Crop, LabelImage, labels_to_set
from napari_nanodefect.core.segment import ModelConfig
from napari_nanodefect.core.segment.rehearsal import DEFAULT_REHEARSAL, median_diameter, synthetic_regions
from napari_nanodefect.core.segment.train import TrainingImage
from napari_nanodefect.core.synthetic import make_particles

T = importlib.import_module("napari_nanodefect.core.segment.train")


def test_median_diameter_of_known_disks():
    lab = np.zeros((100, 100), np.int32)
    yy, xx = np.mgrid[:100, :100]
    for k, (cy, cx, r) in enumerate([(20, 20, 5), (50, 50, 10), (80, 80, 15)], start=1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    assert median_diameter(lab) == pytest.approx(20.0, rel=0.03)  # the middle disk
    assert median_diameter(np.zeros((5, 5), np.int32)) is None


def test_synthetic_regions_are_at_the_trained_size_training_only_and_reproducible():
    regs = synthetic_regions(6, seed=3, object_diameter_px=20.0, max_side=200, background_size=3.0)
    assert 1 <= len(regs) <= 6
    for r in regs:
        d = median_diameter(r.labels)
        # each image is rescaled so its median particle is 20 px (the scale is clipped to
        # 0.3-4 and nearest-neighbour resizing rounds small objects)
        assert 12 < d < 28, (r.name, d)
        assert r.image.shape[0] <= 201 and r.image.dtype == np.float32
        assert r.train.all() and not r.val.any()  # validation stays on the user's crops
        assert np.array_equal(r.fg > 0, r.labels > 0) and set(np.unique(r.cls)) <= {-1, 0}
    again = synthetic_regions(6, seed=3, object_diameter_px=20.0, max_side=200, background_size=3.0)
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels) for a, b in zip(regs, again))
    other = synthetic_regions(6, seed=4, object_diameter_px=20.0, max_side=200, background_size=3.0)
    assert not np.array_equal(regs[0].image, other[0].image)


def test_synthetic_regions_pass_the_faint_haadf_fraction_on():
    # the fine-tune's rehearsal (fraction 0) is what it was; the starter script can ask for faint HAADF draws
    kw = dict(seed=5, object_diameter_px=20.0, max_side=200)
    plain = synthetic_regions(8, **kw)
    zero = synthetic_regions(8, faint_haadf=0.0, **kw)
    assert [r.name for r in plain] == [r.name for r in zero]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(plain, zero))
    faint = synthetic_regions(8, faint_haadf=1.0, **kw)
    differs = [not (a.image.shape == b.image.shape and np.array_equal(a.image, b.image))
               for a, b in zip(plain, faint) if a.name == b.name]
    assert any(differs)


class _Stop(Exception):
    pass


def _captured_fit(monkeypatch):
    """Replace the optimisation loop: record what train() hands it, then stop."""
    seen = {}

    def fake_fit(module, cfg, regions, sampler, dev, **kw):
        seen.update(regions=regions, sampler=sampler, epoch_area=kw.get("epoch_area"), epoch_share=kw.get("epoch_share"))
        raise _Stop

    monkeypatch.setattr(T, "fit", fake_fit)
    return seen


def _item(classes=None):
    s = make_particles(shape=(192, 192), n=20, seed=1, single_sites=20 if classes else 0)
    aset = labels_to_set(LabelImage(s.labels, s.classes if classes else {}))
    aset.crops = [Crop(0, 0, 192, 192)]
    return TrainingImage(aset, s.image, None)


def test_fine_tuning_the_starter_mixes_in_synthetic_images_at_a_fixed_share(monkeypatch):
    from napari_nanodefect.core.segment.rehearsal import REHEARSAL_SHARE

    seen = _captured_fit(monkeypatch)
    with pytest.raises(_Stop):
        T.train([_item()], None, base="starter", epochs=1)
    sampler, user = seen["sampler"], seen["regions"]
    syn = [k for k, r in enumerate(sampler.regions) if r.name.startswith("synthetic")]
    assert 0 < len(syn) <= DEFAULT_REHEARSAL and len(sampler.regions) == len(syn) + len(user)
    assert not any(r.name.startswith("synthetic") for r in user)  # validation: the user's crops only
    # half the patch centres fall in the synthetic images, however small the crops
    assert sampler.weights[syn].sum() == pytest.approx(REHEARSAL_SHARE)
    rng = np.random.default_rng(0)
    draws = rng.choice(len(sampler.regions), size=4000, p=sampler.weights)
    assert np.isin(draws, syn).mean() == pytest.approx(REHEARSAL_SHARE, abs=0.03)
    # an epoch still draws the crops' area ~4 times, in the half of the patches they get
    a_user = sum(float(r.train.sum()) for r in user)
    assert seen["epoch_area"] == pytest.approx(a_user) and seen["epoch_share"] == 1 - REHEARSAL_SHARE


@pytest.mark.parametrize("kw, expected", [
    (dict(base=None, config=ModelConfig(encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 8))), 0),
    (dict(base="starter", rehearsal=0), 0),
    (dict(base=None, config=ModelConfig(encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 8)), rehearsal=3), 3),
])
def test_rehearsal_only_by_default_for_the_starter(monkeypatch, kw, expected):
    seen = _captured_fit(monkeypatch)
    with pytest.raises(_Stop):
        T.train([_item()], None, epochs=1, **kw)
    n_syn = sum(r.name.startswith("synthetic") for r in seen["sampler"].regions)
    assert n_syn == expected if expected == 0 else 0 < n_syn <= expected


def test_no_rehearsal_for_several_classes_and_bad_values(monkeypatch):
    seen = _captured_fit(monkeypatch)
    with pytest.raises(_Stop):
        T.train([_item(classes=True)], None, base="starter", epochs=1)
    assert not any(r.name.startswith("synthetic") for r in seen["sampler"].regions)
    for bad in (-1, "some", 2.5, True):
        with pytest.raises(ValueError, match="rehearsal"):
            T.train([_item()], None, base="starter", epochs=1, rehearsal=bad)


def test_cli_rehearsal_argument():
    from napari_nanodefect.cli import build_parser

    p = build_parser()
    base = ["train", "a.json", "--out", "m"]
    assert p.parse_args(base).rehearsal == "auto"
    assert p.parse_args(base + ["--rehearsal", "0"]).rehearsal == 0
    assert p.parse_args(base + ["--rehearsal", "12"]).rehearsal == 12
    with pytest.raises(SystemExit):
        p.parse_args(base + ["--rehearsal", "-2"])


def test_an_epoch_with_rehearsal_shows_the_crops_as_often_as_without():
    tiny = dict(encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 8))
    kw = dict(base=None, epochs=1, batch_size=4, patch=64, validate_every_s=1e9)
    plain = T.train([_item()], None, config=ModelConfig(**tiny), rehearsal=0, **kw).summary
    mixed = T.train([_item()], None, config=ModelConfig(**tiny), rehearsal=2, **kw).summary
    assert plain["rehearsal_images"] == 0 and mixed["rehearsal_images"] >= 1
    assert mixed["iterations_per_epoch"] == 2 * plain["iterations_per_epoch"] == mixed["iterations"]
