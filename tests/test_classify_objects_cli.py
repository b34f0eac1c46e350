"""``nanodefect classify train|apply`` and core/objects/files.py: per-object classes from
files, onto files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_nanodefect.cli import main
from napari_nanodefect.core.annotations import labels_to_set, read_label_tiff, write_label_tiff, write_labelme
from napari_nanodefect.core.annotations.labels import LabelImage
from napari_nanodefect.core.errors import NanodefectError
from napari_nanodefect.core.objects.files import collect_labelled_objects, patch_class


def _field(seed: int, n_side: int = 6, pitch: int = 40):
    """A micrograph with ``n_side``² round particles on a jittered grid: about a third
    carry lattice fringes (period 3 px, ``fringed``), the rest are uniform (``plain``).
    Returns (image uint8, labels, {label: class})."""
    rng = np.random.default_rng(seed)
    H = W = n_side * pitch
    img = np.full((H, W), 0.15) + rng.normal(0, 0.03, (H, W))
    lab = np.zeros((H, W), np.uint16)
    yy, xx = np.mgrid[:H, :W]
    classes = {}
    k = 0
    for i in range(n_side):
        for j in range(n_side):
            k += 1
            cy = i * pitch + pitch / 2 + rng.uniform(-3, 3)
            cx = j * pitch + pitch / 2 + rng.uniform(-3, 3)
            r = rng.uniform(9, 14)
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            lab[disk] = k
            img[disk] += rng.uniform(0.4, 0.6)
            fringed = rng.random() < 0.35
            if fringed:
                a = rng.uniform(0, np.pi)
                img[disk] += 0.2 * np.sin(2 * np.pi * (xx[disk] * np.cos(a) + yy[disk] * np.sin(a)) / 3.0)
            classes[k] = "fringed" if fringed else "plain"
    img = np.clip(img * 255, 0, 255).astype(np.uint8)
    return img, lab, classes


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    d = tmp_path_factory.mktemp("fields")
    out = {}
    for name, seed in (("train", 1), ("test", 2)):
        img, lab, cls = _field(seed)
        tifffile.imwrite(d / f"{name}.tif", img)
        out[name] = (d / f"{name}.tif", img, lab, cls)
    # training objects as LabelMe polygons with their classes; test objects as an
    # unclassified label TIFF (as `nanodefect predict` writes)
    p, img, lab, cls = out["train"]
    aset = labels_to_set(LabelImage(lab, cls))
    aset.image_path, aset.image_height, aset.image_width = "train.tif", *img.shape
    write_labelme(aset, d / "train.json")
    p, img, lab, cls = out["test"]
    write_label_tiff(d / "test_labels.tif", lab, {k: "particle" for k in cls}, 0.2, "test.tif")
    return d, out


def test_patch_class_from_file_names():
    assert patch_class("SF1_3.tif") == "SF1"
    assert patch_class("Twin_Bound_12.png") == "Twin_Bound"
    assert patch_class("bulk-4.tif") == "bulk"
    assert patch_class("no fault (2).tif") == "no fault"
    assert patch_class("vacancy.tif") == "vacancy"


def test_collect_objects_from_labelme_has_classes_masks_and_groups(fields):
    d, out = fields
    objs = collect_labelled_objects([d / "train.json"])
    cls = out["train"][3]
    assert objs.classes == ["fringed", "plain"]
    assert objs.counts() == {"fringed": sum(v == "fringed" for v in cls.values()),
                             "plain": sum(v == "plain" for v in cls.values())}
    assert objs.crops.shape[1:] == (48, 48) and objs.masks is not None and objs.masks.shape == objs.crops.shape
    assert set(objs.groups) == {"train"}
    # the crop of each object is centred on it: its mask covers the crop centre
    assert objs.masks[:, 24, 24].all()
    with pytest.raises(NanodefectError, match="at least two classes"):
        collect_labelled_objects([d / "train.json"], classes=["plain"])


def test_cli_train_on_labelme_then_apply_to_label_tiff(fields, tmp_path, capsys):
    d, out = fields
    model = tmp_path / "clf"
    assert main(["classify", "train", str(d / "train.json"), "--out", str(model), "--cv", "3"]) == 0
    text = capsys.readouterr().out
    assert "3-fold cross-validated balanced accuracy" in text
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["engine"] == "rf" and cfg["classes"] == ["fringed", "plain"] and cfg["with_shape"] is True
    assert cfg["cross_validation"]["balanced_accuracy"] >= 0.9

    res_dir = tmp_path / "res"
    assert main(["classify", "apply", str(model), str(d / "test_labels.tif"), "--image", str(d / "test.tif"),
                 "--out", str(res_dir)]) == 0
    table = pd.read_csv(res_dir / "test_classes.csv")
    truth = out["test"][3]
    assert len(table) == len(truth)
    acc = np.mean([truth[int(r.label)] == r["class"] for _, r in table.iterrows()])
    assert acc >= 0.9
    assert set(table["class_before"]) == {"particle"}
    assert np.allclose(table["p_fringed"] + table["p_plain"], 1.0)
    assert (table["class_probability"] >= 0.5).all()
    # sizes in nm from the label file's pixel size (0.2 nm/px): radius 9-14 px disks
    assert table["ecd_nm"].between(2 * 8.5 * 0.2, 2 * 14.5 * 0.2).all()
    # the relabelled TIFF carries the predicted classes
    li = read_label_tiff(res_dir / "test_labels.tif")
    assert li.classes == {int(r.label): r["class"] for _, r in table.iterrows()}
    assert li.pixel_size_nm == pytest.approx(0.2)
    summ = pd.read_csv(res_dir / "classes_summary.csv")
    assert sorted(summ["class"]) == ["fringed", "plain"]
    assert summ["count"].sum() == len(truth)
    assert dict(zip(summ["class"], summ["count"])) == table["class"].value_counts().to_dict()
    assert (res_dir / "histogram.png").stat().st_size > 1000
    # measuring the relabelled TIFF gives the per-class populations
    assert main(["measure", str(res_dir / "test_labels.tif"), "--out", str(tmp_path / "m")]) == 0
    s = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert set(s["per_class"]) == set(table["class"])


def test_cli_patch_folders_train_and_apply(fields, tmp_path, capsys):
    from PIL import Image

    from napari_nanodefect.core.objects.features import object_crops

    d, out = fields
    root = tmp_path / "patches"
    for name in ("train", "test"):
        _, img, lab, cls = out[name]
        crops, _, ids = object_crops(img, lab, size=40, normalise=False)
        for c, i in zip(crops, ids):
            sub = root / name / cls[int(i)]
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(c, 0, 255).astype(np.uint8)).save(sub / f"{cls[int(i)]}_{int(i)}.png")
    (root / "train" / "plain" / "notes.txt").write_text("not an image")
    model = tmp_path / "clf"
    assert main(["classify", "train", str(root / "train"), "--out", str(model), "--cv", "3"]) == 0
    text = capsys.readouterr()
    assert "patches" in text.out and "notes.txt" in text.err
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["crop_size"] == 40 and cfg["with_shape"] is False and cfg["source"] == "patches"
    assert main(["classify", "apply", str(model), str(root / "test"), "--patches", "--out", str(tmp_path / "r")]) == 0
    t = pd.read_csv(tmp_path / "r" / "patch_classes.csv")
    truth = [p.split("/")[-2] for p in t["patch"]]
    assert len(t) == len(out["test"][3])
    assert np.mean(np.array(truth) == t["class"].to_numpy()) >= 0.9


def test_cli_classify_errors_are_clear(fields, tmp_path, capsys):
    d, out = fields
    # labels without their image: the crops cannot be cut
    write_label_tiff(tmp_path / "lonely_labels.tif", out["test"][2], {1: "a", 2: "b"})
    assert main(["classify", "train", str(tmp_path / "lonely_labels.tif"), "--out", str(tmp_path / "m")]) == 2
    assert "image" in capsys.readouterr().err
    assert main(["classify", "apply", str(tmp_path / "nothing"), str(d / "test_labels.tif"),
                 "--out", str(tmp_path / "r")]) == 2
    assert "object-classifier folder" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
