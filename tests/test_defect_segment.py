"""Multi-label defect segmenter (core/defects/segment.py): model files, tiling, masked
loss, learning of visible line defects, and the statistics of thresholded maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_nanodefect.core.defects.segment import (
    DefectModel,
    build_defect_model,
    defect_statistics,
    load_defect_model,
    masked_loss,
    predict_defects,
    save_defect_model,
    train_defects,
)
from napari_nanodefect.core.defects.simulate import length_inside, random_defects
from napari_nanodefect.core.errors import NanodefectError
from napari_nanodefect.core.segment.model import default_model_dir

CLASSES = ["grain_boundary"]


_inside_length = length_inside


def _visible_lines(seed: int, shape=(224, 224), n_lines: int = 3, width: float = 4):
    """Bright 4-px line defects (random_defects geometry) on a textured, noisy support
    with bright particles: image, true mask, true centre-line length (px)."""
    rng = np.random.default_rng(seed)
    dmap, geom = random_defects(shape, "lines", n=n_lines, rng=rng, width_px=width)
    tex = ndi.gaussian_filter(rng.standard_normal(shape), 6)
    img = 0.3 + 0.05 * tex / tex.std()
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for _ in range(40):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(2.5, 4.0)
        img += 0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
    img += 0.35 * dmap
    img = ndi.gaussian_filter(img, 0.8) + rng.normal(0, 0.06, shape)
    return img.astype(np.float32), dmap, _inside_length(geom["lines"], shape)


def _small_model(classes=CLASSES, seed=0) -> DefectModel:
    torch.manual_seed(seed)
    return build_defect_model(classes, arch="Unet", encoder="resnet18", encoder_depth=3,
                              decoder_channels=(64, 32, 16), encoder_weights=None)


@pytest.fixture(scope="module")
def trained():
    """A small U-Net trained for a fixed number of epochs (not a time budget) on two
    synthetic images; shared by the learning and tiling tests."""
    train = [_visible_lines(s) for s in (1, 2)]
    model, info = train_defects([t[0] for t in train], [t[1][None] for t in train], CLASSES,
                                model=_small_model(), epochs=25, time_budget_s=None, patch=64,
                                batch_size=8, lr=2e-3, seed=0, line_width_px=4)
    return model, info


# ----------------------------------------------------------------------------- files


def test_save_load_round_trip_and_errors(tmp_path):
    model = _small_model(["grain_boundary", "point_defect"])
    model.module.eval()
    img = _visible_lines(5, shape=(96, 128))[0]
    before = predict_defects(model, img, tile=512)
    folder = save_defect_model(model, tmp_path / "defects")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["task"] == "defects" and cfg["classes"] == ["grain_boundary", "point_defect"]
    assert (folder / "model.safetensors").exists()
    loaded = load_defect_model(folder, device="cpu")
    assert loaded.classes == model.classes
    after = predict_defects(loaded, img, tile=512)
    assert before.shape == (2, 96, 128) and before.dtype == np.uint8
    np.testing.assert_array_equal(before, after)
    # saving again over a model folder replaces it
    save_defect_model(loaded, folder)

    empty = tmp_path / "no_config"
    empty.mkdir()
    (empty / "model.safetensors").write_bytes(b"")
    with pytest.raises(NanodefectError):
        load_defect_model(empty)
    with pytest.raises(NanodefectError):
        load_defect_model(tmp_path / "missing")
    with pytest.raises(NanodefectError, match="not a defect model"):
        load_defect_model(default_model_dir())  # the shipped particle model
    # a folder that is not a model is never overwritten
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(NanodefectError):
        save_defect_model(model, other)
    assert (other / "keep.txt").exists()


# ----------------------------------------------------------------------------- tiling


def test_tiled_matches_untiled(trained):
    model, _ = trained
    img = _visible_lines(7, shape=(200, 232))[0]
    whole = predict_defects(model, img, tile=512).astype(np.float32)
    tiled = predict_defects(model, img, tile=96, overlap=32).astype(np.float32)
    assert whole.shape == tiled.shape == (1, 200, 232)
    inner = np.abs(whole - tiled)[:, 16:-16, 16:-16]
    assert inner.mean() < 2.0, inner.mean()  # of 255
    assert np.percentile(inner, 99.5) < 20, np.percentile(inner, 99.5)
    # the thresholded masks agree almost everywhere
    assert ((whole >= 128) != (tiled >= 128))[:, 16:-16, 16:-16].mean() < 0.005


# ----------------------------------------------------------------------------- loss


def test_masked_loss_ignores_unannotated_pixels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, generator=g, requires_grad=True)
    target = (torch.rand(2, 3, 16, 16, generator=g) > 0.7).float()
    weight = torch.zeros(2, 1, 16, 16)
    weight[:, :, 4:12, 2:10] = 1
    loss = masked_loss(logits, target, weight)
    loss.backward()
    outside = (weight == 0).expand_as(logits)
    assert torch.all(logits.grad[outside] == 0)
    assert torch.any(logits.grad[~outside] != 0)
    # changing targets or logits outside the annotated area does not change the loss
    t2 = target.clone()
    t2[outside] = 1 - t2[outside]
    l2 = logits.detach().clone()
    l2[outside] = 50.0
    assert torch.allclose(masked_loss(l2, t2, weight), loss.detach())


# ----------------------------------------------------------------------------- learning


def test_learns_visible_line_defects(trained):
    model, info = trained
    assert info["steps"] == 25 * info["steps_per_epoch"]
    assert info["losses"][-1] < info["losses"][0]
    img, truth, true_len = _visible_lines(10)  # held out: another seed
    prob = predict_defects(model, img, tile=256)
    _, summary = defect_statistics(prob, CLASSES, pixel_size_nm=1.0, point_classes=(), min_area_px=20)
    length = summary["per_class"]["grain_boundary"]["total_length_nm"]
    assert abs(length / true_len - 1) <= 0.10, (length, true_len)
    pred = prob[0] >= 128
    inter = (pred & truth).sum()
    dice = 2 * inter / (pred.sum() + truth.sum())
    iou = inter / (pred | truth).sum()
    assert dice > 0.5 and iou > 0.5, (dice, iou)


# ----------------------------------------------------------------------------- statistics


def test_defect_statistics_known_line_and_points():
    H, W = 200, 240
    classes = ["grain_boundary", "point_defect"]
    prob = np.zeros((2, H, W), np.uint8)
    prob[0, 48:53, 50:150] = 200  # straight flat-ended 100 px x 5 px line
    prob[0, 120:160, 30:40] = 100  # below threshold: ignored
    yy, xx = np.mgrid[:H, :W]
    centres = [(30, 200), (80, 20), (100, 120), (150, 180), (180, 60), (170, 220), (20, 20)]
    for cy, cx in centres:
        prob[1][(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = 230
    ps = 2.0
    table, summary = defect_statistics(prob, classes, pixel_size_nm=ps)
    gb = table[table["class"] == "grain_boundary"]
    assert len(gb) == 1
    assert abs(float(gb["length_nm"].iloc[0]) - 100 * ps) <= 0.03 * 100 * ps
    assert int(gb["branches"].iloc[0]) == 1
    area_um2 = H * W * ps * ps / 1e6
    assert summary["point_counts"] == {"point_defect": 7}
    assert summary["per_class"]["point_defect"]["n_defects"] == 7
    assert summary["per_class"]["point_defect"]["density_per_um2"] == pytest.approx(7 / area_um2)
    assert summary["per_class"]["grain_boundary"]["length_density_nm_per_um2"] == pytest.approx(
        float(gb["length_nm"].iloc[0]) / area_um2)
    assert (table["class"] == "point_defect").sum() == 7
    assert list(table["defect_id"]) == list(range(1, 9))
    # float probabilities and a higher threshold
    _, s2 = defect_statistics(prob.astype(np.float32) / 255, classes, pixel_size_nm=ps, threshold=0.85)
    assert s2["point_counts"]["point_defect"] == 7 and s2["per_class"]["grain_boundary"]["n_defects"] == 0


def test_train_with_annotated_crop_progress_and_stop(tmp_path):
    img, truth, _ = _visible_lines(3, shape=(96, 96))
    ann = np.zeros(img.shape, bool)
    ann[10:70, 20:90] = True
    calls = []
    model, info = train_defects([img], [truth[None]], CLASSES, annotated=[ann], model=_small_model(),
                                epochs=50, time_budget_s=None, patch=48, batch_size=2,
                                progress=lambda i, n: calls.append((i, n)), should_stop=lambda: len(calls) >= 2)
    assert info["stopped"] and info["steps"] == 2 and calls[-1][0] == 2
    assert not model.module.training
    save_defect_model(model, tmp_path / "m")  # training facts are valid JSON
    with pytest.raises(NanodefectError):
        train_defects([img], [truth[None]], CLASSES, annotated=[np.zeros_like(ann)], epochs=1, model=_small_model())
    with pytest.raises(NanodefectError):
        train_defects([img], [truth[None]], ["a", "b"], epochs=1, model=_small_model())


def test_particle_loader_refuses_a_defect_model_clearly(tmp_path):
    from napari_nanodefect.core.defects.segment import build_defect_model, save_defect_model
    from napari_nanodefect.core.errors import NanodefectError
    from napari_nanodefect.core.segment import load_model

    save_defect_model(build_defect_model(["grain_boundary"], encoder_weights=None), tmp_path / "d")
    with pytest.raises(NanodefectError, match="'defects' model, not a particle model"):
        load_model(tmp_path / "d", device="cpu")


def test_hysteresis_keeps_the_faint_stretch_of_a_line():
    """A 100-px line whose middle 40 px are faint (p 0.3): a plain threshold of 0.5 cuts it
    in two 30-px pieces; hysteresis at 0.2 keeps the whole line; an isolated faint blob
    (not touching any certain pixel) stays out."""
    from napari_nanodefect.core.defects.segment import threshold_masks

    prob = np.zeros((1, 80, 160), np.uint8)
    prob[0, 20:25, 30:130] = 200
    prob[0, 20:25, 60:100] = 77  # 0.30
    prob[0, 60:70, 60:70] = 77  # faint and isolated
    _, plain = defect_statistics(prob, CLASSES, 1.0, point_classes=())
    _, hyst = defect_statistics(prob, CLASSES, 1.0, point_classes=(), low_threshold=0.2)
    assert plain["n_defects"] == 2 and abs(plain["total_length_nm"] - 60) <= 4
    assert hyst["n_defects"] == 1 and abs(hyst["total_length_nm"] - 100) <= 4
    m = threshold_masks(prob, 0.5, [0.2])
    assert not m[0, 60:70, 60:70].any() and m[0, 20:25, 30:130].all()
    assert hyst["low_threshold"] == [0.2]
    with pytest.raises(ValueError, match="one low threshold per class"):
        threshold_masks(prob, 0.5, [0.2, 0.1])


def test_calibrate_thresholds_picks_the_low_threshold_that_restores_length(tmp_path):
    """A stand-in network whose output is a line with a faint middle: calibration against
    the true full-length line picks a low threshold below the faint level, stores it in
    the config, and it survives save/load."""
    from napari_nanodefect.core.defects.segment import calibrate_thresholds, thresholds_from_config

    class Faint(torch.nn.Module):
        def forward(self, x):
            out = torch.full((x.shape[0], 1, *x.shape[2:]), -6.0)
            out[:, :, 20:25, 30:130] = 2.0
            out[:, :, 20:25, 60:100] = -0.85  # sigmoid 0.30
            return out

    model = _small_model()
    model.module = Faint()
    img = np.zeros((64, 160), np.float32)
    truth = np.zeros((1, 64, 160), bool)
    truth[0, 20:25, 30:130] = True
    res = calibrate_thresholds(model, [img], [truth], candidates=(0.1, 0.2, 0.35, 0.5))
    assert res["low_threshold"] == {"grain_boundary": 0.2}  # the highest that restores the length
    errs = res["classes"]["grain_boundary"]["length_error"]
    assert errs[0.5] == pytest.approx(-0.4, abs=0.05) and abs(errs[0.2]) < 0.05
    assert thresholds_from_config(model.config, CLASSES) == (0.5, [0.2])


def test_length_inside_clips_lines_to_the_image():
    line = np.array([[10.0, -50.0], [10.0, 150.0]])  # (row, col), crosses a 100-px-wide image
    assert length_inside([line], (40, 100)) == pytest.approx(100.0, abs=0.6)
    assert length_inside([line + [100, 0]], (40, 100)) == 0.0


# ----------------------------------------------------------------------------- precision


def test_defect_prediction_in_bf16_matches_float32(trained, monkeypatch, tmp_path):
    from napari_nanodefect.core.segment import model as model_mod

    model, _ = trained
    img = _visible_lines(9, shape=(200, 232))[0]
    monkeypatch.setattr(model_mod, "_NATIVE_BF16", True)  # this CPU counts as bf16-capable
    model.precision = "fp32"
    assert model.autocast_dtype() is None
    exact = predict_defects(model, img, tile=128, overlap=32)
    model.precision = "auto"
    assert model.autocast_dtype() is torch.bfloat16
    fast = predict_defects(model, img, tile=128, overlap=32)
    diff = np.abs(fast.astype(int) - exact.astype(int))
    assert diff.max() > 0  # bfloat16 really ran
    assert diff.mean() < 1.5 and diff.max() < 40  # of 255
    assert ((fast >= 128) != (exact >= 128)).mean() < 0.005  # the masks agree
    # loading: the precision argument, the environment default, a clear error for a bad value
    folder = save_defect_model(model, tmp_path / "m")
    assert load_defect_model(folder, device="cpu").precision == "auto"
    assert load_defect_model(folder, device="cpu", precision="fp32").precision == "fp32"
    monkeypatch.setenv("NANODEFECT_PRECISION", "fp32")
    loaded = load_defect_model(folder, device="cpu")
    assert loaded.precision == "fp32"
    np.testing.assert_array_equal(predict_defects(loaded, img, tile=128, overlap=32), exact)
    with pytest.raises(NanodefectError, match="precision"):
        load_defect_model(folder, device="cpu", precision="half")
