"""Defect models from files and the command line (core/defects/files.py, cli.py):
``nanodefect train --task defects|classify`` and ``nanodefect predict`` dispatching on
the model's task."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from PIL import Image
from scipy import ndimage as ndi

from napari_nanodefect.cli import main
from napari_nanodefect.core.annotations import AnnotationSet, Crop, ObjectAnnotation, write_labelme
from napari_nanodefect.core.annotations.model import LineAnnotation
from napari_nanodefect.core.defects.classify import load_classifier
from napari_nanodefect.core.defects.files import (
    collect_labelled_images,
    defect_classes_in,
    model_task,
    predict_defect_files,
    train_defect_files,
)
from napari_nanodefect.core.defects.segment import build_defect_model, load_defect_model, save_defect_model
from napari_nanodefect.core.defects.simulate import length_inside, ordering_sample, random_defects
from napari_nanodefect.core.errors import NanodefectError
from napari_nanodefect.core.measure.skeleton import measure_skeleton_file

PS_TRAIN = 2.0  # nm/px of the training images


_inside_length = length_inside


def _scene(seed: int, shape=(224, 224), width: float = 4):
    """Bright 4-px lines on a textured support with bright particles (uint8), the line
    geometry (row, col vertices), the particle disks and the true length (px)."""
    rng = np.random.default_rng(seed)
    dmap, geom = random_defects(shape, "lines", n=3, rng=rng, width_px=width)
    tex = ndi.gaussian_filter(rng.standard_normal(shape), 6)
    img = 0.3 + 0.05 * tex / tex.std()
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    disks = []
    for _ in range(40):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(2.5, 4.0)
        img += 0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
        disks.append((cy, cx, r))
    img += 0.35 * dmap
    img = ndi.gaussian_filter(img, 0.8) + rng.normal(0, 0.06, shape)
    u8 = np.clip((img - img.min()) / (np.ptp(img)) * 255, 0, 255).astype(np.uint8)
    return u8, geom["lines"], disks, _inside_length(geom["lines"], shape)


def _write_training(tmp_path, seed: int, crop_rows: int = 168, with_particles: bool = False):
    img, lines, disks, _ = _scene(seed)
    p = tmp_path / f"train{seed}.png"
    Image.fromarray(img).save(p)
    aset = AnnotationSet(image_path=p.name, image_height=img.shape[0], image_width=img.shape[1],
                         pixel_size_nm=PS_TRAIN)
    aset.crops.append(Crop(0, 0, img.shape[1], crop_rows))
    for v in lines:
        aset.lines.append(LineAnnotation("grain_boundary", np.asarray(v)[:, ::-1]))
    if with_particles:
        from napari_nanodefect.core.annotations.geometry import circle_polygon

        for cy, cx, r in disks[:10]:
            aset.objects.append(ObjectAnnotation("particle", circle_polygon(cx, cy, 8.0)))
    return write_labelme(aset, tmp_path / f"train{seed}.json")


def _small_base(folder, classes=("grain_boundary",)):
    torch.manual_seed(0)
    m = build_defect_model(list(classes), arch="Unet", encoder="resnet18", encoder_depth=3,
                           decoder_channels=(64, 32, 16), encoder_weights=None)
    return save_defect_model(m, folder)


def test_classes_and_line_width_from_files(tmp_path):
    files = [_write_training(tmp_path, 1, with_particles=True)]
    from napari_nanodefect.core.annotations.labelme import read_labelme

    assert defect_classes_in([read_labelme(files[0])]) == ["grain_boundary"]
    base = _small_base(tmp_path / "base")
    # the particles drawn as 16-px disks -> the default line width is half their diameter (8 px)
    res = train_defect_files(files, tmp_path / "m", base=base, epochs=1, time_budget_s=None, patch=64)
    assert res.model.config["line_width_px"] == pytest.approx(8.0, rel=0.02)
    assert res.model.config["pixel_size_nm"] == pytest.approx(PS_TRAIN)
    assert res.model.config["line_width_nm"] == pytest.approx(16.0, rel=0.02)
    assert res.ignored == {"particle": 10}  # reported (they set the width), not trained as a defect class
    # an explicit width wins; a width in nm is converted with the pixel size
    res = train_defect_files(files, None, base=base, epochs=1, time_budget_s=None, patch=64, line_width_nm=6.0)
    assert res.model.config["line_width_px"] == pytest.approx(3.0)
    with pytest.raises(NanodefectError, match="classes"):
        train_defect_files(files, None, base=base, classes=["sheet_border"], epochs=1, time_budget_s=None)


def test_no_defects_annotated_is_a_clear_error(tmp_path):
    p = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(p)
    write_labelme(AnnotationSet(image_path=p.name, image_height=64, image_width=64), tmp_path / "x.json")
    with pytest.raises(NanodefectError, match="no defects annotated"):
        train_defect_files([tmp_path / "x.json"], None, epochs=1, time_budget_s=None)


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("defects")
    files = [_write_training(tmp, s) for s in (1, 2)]
    base = _small_base(tmp / "base")
    res = train_defect_files(files, tmp / "model", base=base, epochs=25, time_budget_s=None, patch=64,
                             line_width_px=4.0, seed=0)
    return tmp, res


def test_predict_files_at_another_pixel_size(trained_folder, tmp_path):
    """A model trained at 2 nm/px on a 1 nm/px image (twice the pixels): the image is
    resampled to the trained scale and the lengths come out in nm within 12 %."""
    tmp, res = trained_folder
    assert model_task(tmp / "model") == "defects"
    img, lines, _, length_px = _scene(7)
    big = np.asarray(Image.fromarray(img).resize((448, 448), Image.BILINEAR))
    path = tmp_path / "held_out.tif"
    tifffile.imwrite(path, big, resolution=(1.0, 1.0), imagej=True, metadata={"unit": "nm"})  # 1 nm/px
    results, summary = predict_defect_files(tmp / "model", [path], tmp_path / "out", probabilities=True)
    r = results[0]
    assert r.pixel_size_nm == pytest.approx(1.0)
    assert r.scale == pytest.approx(0.5)
    truth_nm = length_px * PS_TRAIN
    got = r.summary["per_class"]["grain_boundary"]["total_length_nm"]
    assert abs(got / truth_nm - 1) < 0.12, (got, truth_nm)
    # the files: masks on the image's own grid with class names, the CSV, the summary
    with tifffile.TiffFile(tmp_path / "out" / "held_out_defects.tif") as tf:
        masks = tf.asarray()
        desc = json.loads(tf.pages[0].description)
    assert masks.shape == (1, 448, 448) and set(np.unique(masks)) <= {0, 255}
    assert desc["classes"] == ["grain_boundary"] and desc["pixel_size_nm"] == pytest.approx(1.0)
    prob = tifffile.imread(tmp_path / "out" / "held_out_defects_prob.tif")
    assert np.array_equal(masks > 0, prob >= 128)
    table = pd.read_csv(tmp_path / "out" / "held_out_defects.csv")
    assert table["length_nm"].sum() == pytest.approx(got, rel=1e-4)
    assert set(table["class"]) == {"grain_boundary"}
    s = pd.read_csv(summary)
    assert s.loc[0, "total_length_nm"] == pytest.approx(got, rel=1e-4)
    # nanodefect skeleton re-measures the mask file to the same length
    again = measure_skeleton_file(tmp_path / "out" / "held_out_defects.tif", tmp_path / "sk")
    assert again["total_length_nm"] == pytest.approx(got, rel=1e-3)


def test_cli_train_and_predict_defects(trained_folder, tmp_path, capsys):
    tmp, _ = trained_folder
    model = tmp_path / "cli_model"
    assert main(["train", "--task", "defects", str(tmp / "train1.json"), str(tmp / "train2.json"), "--out", str(model),
                 "--from", str(tmp / "base"), "--epochs", "2", "--line-width-nm", "8", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "defect model" in out and "grain_boundary" in out
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["task"] == "defects" and cfg["line_width_px"] == pytest.approx(4.0)
    assert cfg["training"]["steps"] == 2 * cfg["training"]["steps_per_epoch"]
    assert load_defect_model(model).classes == ["grain_boundary"]
    # predict dispatches on the model's task
    img = tmp / "train1.png"
    assert main(["predict", str(tmp / "model"), str(img), "--out", str(tmp_path / "pred"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "train1_defects.tif" in out
    assert (tmp_path / "pred" / "train1_defects.csv").is_file()
    assert not (tmp_path / "pred" / "train1_labels.tif").exists()
    # a particle model folder is refused by the defect loader, clearly
    from napari_nanodefect.core.segment.model import default_model_dir

    assert model_task(default_model_dir()) == "particles"
    with pytest.raises(NanodefectError, match="not a defect model"):
        predict_defect_files(default_model_dir(), [img], tmp_path / "x")


def _write_class_folders(root, n_per_class: int, seed: int, shape=(192, 192)):
    rng = np.random.SeedSequence(seed).generate_state(2 * n_per_class)
    for i in range(2 * n_per_class):
        ordered = i % 2 == 0
        img, *_ = ordering_sample(shape, ordered=ordered, seed=int(rng[i]))
        d = root / ("ordered" if ordered else "random")
        d.mkdir(parents=True, exist_ok=True)
        u8 = np.clip((img - img.min()) / np.ptp(img) * 255, 0, 255).astype(np.uint8)
        Image.fromarray(u8).save(d / f"{i:02d}.png")
    (root / "random" / "README.txt").write_text("not an image")


def test_collect_labelled_images_from_folders_csv_and_flags(tmp_path):
    _write_class_folders(tmp_path / "set", 2, seed=0)
    li = collect_labelled_images([tmp_path / "set"])
    assert li.classes == ["ordered", "random"] and len(li.paths) == 4
    assert [li.classes[t] for t in li.targets] == [p.parent.name for p in li.paths]
    assert [p.name for p, _ in li.skipped] == ["README.txt"]
    # a tag table (paths relative to it) and LabelMe flags
    (tmp_path / "tags.csv").write_text("image,class\nset/ordered/00.png,ordered\nset/random/01.png,random\n")
    lm = tmp_path / "x.json"
    lm.write_text(json.dumps({"version": "5.0", "flags": {"ordered": True, "random": False}, "shapes": [],
                              "imagePath": "set/ordered/02.png", "imageHeight": 192, "imageWidth": 192}))
    li = collect_labelled_images([tmp_path / "tags.csv", lm], classes=["random", "ordered"])
    assert [p.name for p in li.paths] == ["00.png", "01.png", "02.png"] and li.targets == [1, 0, 1]
    with pytest.raises(NanodefectError, match="at least two classes"):
        collect_labelled_images([lm])
    (tmp_path / "bad.csv").write_text("file,label\na,b\n")
    with pytest.raises(NanodefectError, match="'image' and 'class'"):
        collect_labelled_images([tmp_path / "bad.csv"])


def test_cli_classifier_from_folders(tmp_path, capsys):
    _write_class_folders(tmp_path / "train", 6, seed=1)
    _write_class_folders(tmp_path / "test", 3, seed=2)
    model = tmp_path / "clf"
    assert main(["train", "--task", "classify", str(tmp_path / "train"), "--out", str(model), "--epochs", "30",
                 "--quiet"]) == 0
    assert "image classifier" in capsys.readouterr().out
    assert model_task(model) == "classify"
    images = sorted((tmp_path / "test").glob("*/*.png"))
    assert main(["predict", str(model), *map(str, images), "--out", str(tmp_path / "pred")]) == 0
    table = pd.read_csv(tmp_path / "pred" / "classification.csv")
    assert list(table.columns) == ["image", "p_ordered", "p_random", "predicted"]
    assert np.allclose(table["p_ordered"] + table["p_random"], 1, atol=1e-4)
    # the CLI's numbers are the classifier's own
    clf = load_classifier(model)
    p0 = clf.predict_proba(np.asarray(Image.open(images[0])))
    assert table.loc[0, "p_ordered"] == pytest.approx(p0[0], abs=1e-4)
    # ordered test images score higher than random ones
    truth = np.array([p.parent.name == "ordered" for p in images])
    assert table["p_ordered"][truth].mean() > table["p_ordered"][~truth].mean() + 0.15
    # the probability map lies on the image grid (NaN where no patch centre falls)
    m = tifffile.imread(tmp_path / "pred" / f"{images[0].stem}_random_map.tif")
    # 128-px patches every 64 px on 192 px: 2 x 2 patch centres, each owning a 64-px cell from px 32 on
    fin = np.isfinite(m[0])
    assert m.shape == (1, 192, 192) and fin[32:160, 32:160].all() and fin.sum() == 128 * 128
    assert np.nanmax(m) <= 1 and np.nanmin(m) >= 0


def test_cli_predict_defects_precision_is_applied_and_recorded(trained_folder, tmp_path, monkeypatch):
    from napari_nanodefect.core.segment import model as model_mod

    tmp, _ = trained_folder
    img = tmp / "train1.png"
    monkeypatch.setattr(model_mod, "_NATIVE_BF16", True)  # this CPU counts as bf16-capable
    got = {}
    for flag, expect in (([], "bfloat16"), (["--precision", "fp32"], "float32")):
        out = tmp_path / expect
        assert main(["predict", str(tmp / "model"), str(img), "--out", str(out), "--probabilities", "--quiet"] + flag) == 0
        with tifffile.TiffFile(out / "train1_defects.tif") as tf:
            assert tf.shaped_metadata[0]["precision"] == expect
        got[expect] = tifffile.imread(out / "train1_defects_prob.tif").astype(int)
    diff = np.abs(got["bfloat16"] - got["float32"])
    assert 0 < diff.max() < 40 and diff.mean() < 1.5  # reduced precision really ran, and stays close
