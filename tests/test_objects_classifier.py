"""Per-object crops, features and the two classifier engines (core/objects)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_nanodefect.core.errors import NanodefectError
from napari_nanodefect.core.objects.classifier import (
    Forest,
    balanced_accuracy,
    cross_validate,
    load_object_classifier,
    save_object_classifier,
    train_object_classifier,
)
from napari_nanodefect.core.objects.features import feature_names, object_crops, patch_features, radial_profile


def test_radial_profile_peaks_at_the_fringe_frequency():
    yy, xx = np.mgrid[:64, :64]
    for period in (4.0, 8.0):
        stripes = np.sin(2 * np.pi * (xx * np.cos(0.4) + yy * np.sin(0.4)) / period)
        prof = radial_profile(stripes)  # one ring per integer radius: ring r = r / 64 cycles/px
        assert abs(np.argmax(prof) / 64 - 1 / period) <= 1.5 / 64
    f4 = patch_features(np.sin(2 * np.pi * xx / 4.0), "groschner")
    f8 = patch_features(np.sin(2 * np.pi * xx / 8.0), "groschner")
    # centre of mass of the radial profile follows the fringe frequency (0.25 vs 0.125 cycles/px)
    assert f4[2] > f8[2] + 0.05
    assert len(patch_features(stripes)) == len(feature_names())
    assert len(patch_features(stripes, mask=np.ones((64, 64), bool))) == len(feature_names(with_shape=True))


def test_object_crops_centre_and_scale_known_disks():
    lab = np.zeros((120, 160), np.int32)
    yy, xx = np.mgrid[:120, :160]
    lab[(yy - 40) ** 2 + (xx - 50) ** 2 <= 10 ** 2] = 1
    lab[(yy - 90) ** 2 + (xx - 150) ** 2 <= 6 ** 2] = 2  # near the border: reflect-padded
    img = np.where(lab > 0, 200.0, 20.0)
    crops, masks, ids = object_crops(img, lab, size=48, pad=1.5)
    assert list(ids) == [1, 2] and crops.shape == (2, 48, 48)
    # the disk fills (its area) / (1.5 x its box side)^2 of the crop, centred, whatever its size
    for i, m in zip((1, 2), masks):
        area, side = (lab == i).sum(), np.ptp(np.nonzero((lab == i).any(0))[0]) + 1
        assert m.mean() == pytest.approx(area / (1.5 * side) ** 2, rel=0.05)
        cy, cx = np.argwhere(m).mean(0)
        assert abs(cy - 23.5) < 1.0 and abs(cx - 23.5) < 1.0
    assert crops[0][masks[0]].mean() > 0.9 and crops[0][~masks[0]].mean() < 0.1  # normalised intensities
    with pytest.raises(ValueError, match="not in the label image"):
        object_crops(img, lab, ids=[7])


def _particles(n, kind, rng, size=40):
    """Crops of round particles: ``fringed`` ones carry lattice fringes (period 3 px),
    ``plain`` ones are uniform; both with noise and random size/brightness."""
    out = []
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    for _ in range(n):
        r = rng.uniform(9, 14)
        disk = (yy ** 2 + xx ** 2) <= r * r
        base = rng.uniform(0.5, 0.8)
        img = 0.1 + disk * base
        if kind == "fringed":
            a = rng.uniform(0, np.pi)
            img = img + disk * 0.25 * np.sin(2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / 3.0 + rng.uniform(0, 6))
        out.append(img + rng.normal(0, 0.05, img.shape))
    return np.asarray(out, np.float32)


@pytest.fixture(scope="module")
def fringe_set():
    rng = np.random.default_rng(0)
    crops = np.concatenate([_particles(40, "plain", rng), _particles(8, "fringed", rng)])  # imbalanced 5:1
    targets = np.array([0] * 40 + [1] * 8)
    return crops, targets, ["plain", "fringed"]


def test_forest_arrays_equal_sklearn_and_round_trip(tmp_path, fringe_set):
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 6))
    y = (X[:, 0] + 0.5 * X[:, 3] > 0).astype(int) + (X[:, 1] > 1).astype(int)
    rf = RandomForestClassifier(n_estimators=25, random_state=0).fit(X, y)
    Xt = rng.normal(size=(50, 6))
    assert np.allclose(Forest.from_sklearn(rf).predict_proba(Xt), rf.predict_proba(Xt), atol=1e-6)
    crops, targets, classes = fringe_set
    model = train_object_classifier(crops, targets, classes, engine="rf", n_trees=50)
    p = model.predict_proba(crops)
    save_object_classifier(model, tmp_path / "rf")
    cfg = json.loads((tmp_path / "rf" / "config.json").read_text())
    assert cfg["engine"] == "rf" and cfg["n_per_class"] == {"plain": 40, "fringed": 8}
    again = load_object_classifier(tmp_path / "rf")
    assert np.array_equal(again.predict_proba(crops), p)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{}")
    with pytest.raises(NanodefectError, match="not a napari-nanodefect-object-classifier"):
        load_object_classifier(tmp_path / "bad")


def test_rf_cross_validation_on_imbalanced_classes(fringe_set):
    crops, targets, classes = fringe_set
    res = cross_validate(crops, targets, classes, k=4, engine="rf", n_trees=100)
    assert res["k"] == 4 and res["confusion"].sum() == len(targets)
    assert res["pooled_balanced_accuracy"] >= 0.9, res["confusion"]
    assert balanced_accuracy(targets, res["predictions"], 2) == pytest.approx(res["pooled_balanced_accuracy"])
    # a single-class or empty class is refused clearly
    with pytest.raises(NanodefectError, match="no training objects"):
        train_object_classifier(crops[:40], targets[:40], classes)


def test_cnn_engine_learns_fringes_with_class_balancing(tmp_path, fringe_set):
    crops, targets, classes = fringe_set
    rng = np.random.default_rng(5)
    test = np.concatenate([_particles(10, "plain", rng), _particles(10, "fringed", rng)])
    truth = np.array([0] * 10 + [1] * 10)
    model = train_object_classifier(crops, targets, classes, engine="cnn", epochs=60, seed=0)
    proba = model.predict_proba(test)
    # the batched prediction equals the classifier's own, crop by crop
    assert np.allclose(proba, np.stack([model.cnn.predict_proba(c) for c in test]), atol=1e-5)
    pred = np.argmax(proba, 1)
    assert balanced_accuracy(truth, pred, 2) >= 0.85
    save_object_classifier(model, tmp_path / "cnn")
    again = load_object_classifier(tmp_path / "cnn")
    assert np.allclose(again.predict_proba(test), model.predict_proba(test), atol=1e-5)
