"""Ordered-vs-disordered image classifier (core.defects.classify), CPU only, seeded."""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("safetensors")

from napari_nanodefect.core.defects.classify import (
    build_classifier,
    load_classifier,
    roc_auc,
    save_classifier,
    simulated_dataset,
    train_classifier,
)
from napari_nanodefect.core.errors import NanodefectError

CLASSES = ["random", "ordered"]
SHAPE = (192, 192)


@pytest.fixture
def one_thread():
    """Training is tiny; one thread is fastest and reproducible on a shared 2-core CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_roc_auc_hand_computed():
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    # pairs (pos, neg): (0.4 vs 0.1) win, (0.4 vs 0.4) tie, (0.35 vs 0.1) win, (0.35 vs 0.4) loss
    assert roc_auc([0.1, 0.4, 0.35, 0.4], [0, 0, 1, 1]) == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        roc_auc([0.1, 0.2], [1, 1])


def test_pca_known_data():
    from napari_nanodefect.core.defects.classify import pca

    rng = np.random.default_rng(0)
    t = rng.normal(size=200)
    x = np.column_stack([3 * t, 3 * t, 0.01 * rng.normal(size=200)])  # one direction (1,1,0)/sqrt2
    scores, frac = pca(x, k=2)
    assert frac[0] > 0.999
    assert abs(np.corrcoef(scores[:, 0], t)[0, 1]) > 0.9999
    assert np.std(scores[:, 0]) == pytest.approx(3 * np.sqrt(2) * np.std(t), rel=1e-6)
    with pytest.raises(ValueError):
        pca(np.ones((1, 3)))


def test_save_load_round_trip(tmp_path, one_thread):
    torch.manual_seed(0)
    clf = build_classifier(CLASSES, encoder="resnet10t", patch=32)
    rng = np.random.default_rng(0)
    img = (rng.random((80, 72)) * 255).astype(np.uint8)
    p = clf.predict_proba(img)
    m = clf.probability_map(img, stride=16)
    folder = save_classifier(clf, tmp_path / "clf")
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert not list(folder.glob("*.pt")) and not list(folder.glob("*.pkl"))
    back = load_classifier(folder)
    assert back.classes == CLASSES and back.patch == 32
    np.testing.assert_array_equal(back.predict_proba(img), p)
    np.testing.assert_array_equal(back.probability_map(img, stride=16), m)
    # saving again over a classifier folder is allowed (atomic replace)
    save_classifier(back, folder)
    # wrong folders: clear NanodefectError
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(NanodefectError, match="config.json"):
        load_classifier(empty)
    with pytest.raises(NanodefectError):
        load_classifier(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(NanodefectError, match="JSON"):
        load_classifier(bad)
    # refuses to overwrite a folder that is not a classifier folder
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(NanodefectError):
        save_classifier(clf, other)
    assert (other / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_simulated_ordered_vs_random_auc(one_thread):
    """Issue target: ROC AUC >= 0.95 on held-out simulations.

    Measured (resnet10t, 64-px patches, 32 train images of 192², 30 epochs ≈ 240 steps,
    ~25 s on a shared 2-core CPU): AUC 0.98 on 16 held-out images (other seeds).
    The assertion keeps a margin below that (>= 0.90) so that a single misranked pair
    out of 64 does not flake; the 0.95 issue target is reported, not asserted.
    """
    x_tr, y_tr = simulated_dataset(32, SHAPE, seed=1)
    x_te, y_te = simulated_dataset(16, SHAPE, seed=2)
    assert sum(y_tr) == 16 and sum(y_te) == 8
    t0 = time.perf_counter()
    clf, hist = train_classifier(
        x_tr, y_tr, CLASSES, encoder="resnet10t", patch=64, epochs=30, time_budget_s=45,
        batch_size=16, lr=3e-3, seed=0,
    )
    train_s = time.perf_counter() - t0
    assert hist["steps"] > 0 and len(hist["loss"]) == hist["steps"]
    scores = [float(clf.predict_proba(x)[1]) for x in x_te]
    auc = roc_auc(scores, y_te)
    print(f"\nheld-out ROC AUC {auc:.3f} after {hist['steps']} steps, {train_s:.1f} s training")
    assert auc >= 0.90, (auc, scores)
    # per-patch probability map
    pm = clf.probability_map(x_te[0], stride=32)
    assert pm.shape == ((SHAPE[0] - 64) // 32 + 1, (SHAPE[1] - 64) // 32 + 1)
    assert pm.dtype == np.float32 and np.all((pm >= 0) & (pm <= 1))
    p = clf.predict_proba(x_te[0])
    assert p.shape == (2,) and p.sum() == pytest.approx(1.0, abs=1e-5)
    # saliency: a map of the image's size, normalised, not uniform
    sal = clf.saliency(x_te[0])
    assert sal.shape == SHAPE and sal.max() == pytest.approx(1.0) and sal.min() >= 0 and sal.std() > 0.01
    # patch embeddings (Boiko Fig. 8): the first principal component of the per-image mean
    # embedding separates ordered from random images
    from napari_nanodefect.core.defects.classify import pca

    emb, centres = clf.embeddings(x_te[0], stride=64)
    assert emb.shape[0] == centres.shape[0] == 9 and emb.ndim == 2  # 3 x 3 patches of 64 px
    np.testing.assert_allclose(centres[0], [32, 32])
    means = np.stack([clf.embeddings(x, stride=64)[0].mean(axis=0) for x in x_te])
    pcs, frac = pca(means, k=2)
    a = roc_auc(pcs[:, 0], y_te)
    print(f"PC1 separates ordered/random with AUC {max(a, 1 - a):.3f} (explains {frac[0]:.0%})")
    assert max(a, 1 - a) >= 0.8
