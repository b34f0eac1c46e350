"""Regenerate the screenshots in docs/images (run under a display or xvfb-run).

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshots.py [--only-classify]

Runs the whole loop of the tutorial (docs/tutorial.md) on a synthetic HAADF image and
takes one screenshot per dock with ``viewer.screenshot``. Uses the synthetic samples only:
real images in ../shared are not ours to publish.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
OUT = HERE / "images"


def save_small(rgba: np.ndarray, path: Path, width: int = 1000) -> None:
    im = Image.fromarray(rgba).convert("RGB")
    if im.width > width:
        im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
    im.quantize(colors=96, method=Image.MEDIANCUT).save(path, optimize=True)
    print(path, im.size, path.stat().st_size // 1024, "KiB")


def wait(app, cond, timeout: float) -> None:
    t0 = time.time()
    while not cond() and time.time() - t0 < timeout:
        app.processEvents()
        time.sleep(0.02)


def fringed_field(seed: int = 3, n_side: int = 7, pitch: int = 44):
    """Round particles on a jittered grid, about a third with lattice fringes (period 3 px)."""
    rng = np.random.default_rng(seed)
    H = W = n_side * pitch
    img = np.full((H, W), 0.15) + rng.normal(0, 0.03, (H, W))
    lab = np.zeros((H, W), np.int32)
    yy, xx = np.mgrid[:H, :W]
    classes = {}
    for k in range(1, n_side * n_side + 1):
        i, j = divmod(k - 1, n_side)
        cy, cx = i * pitch + pitch / 2 + rng.uniform(-4, 4), j * pitch + pitch / 2 + rng.uniform(-4, 4)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(9, 16) ** 2
        lab[disk] = k
        img[disk] += rng.uniform(0.4, 0.6)
        if rng.random() < 0.35:
            a = rng.uniform(0, np.pi)
            img[disk] += 0.2 * np.sin(2 * np.pi * (xx[disk] * np.cos(a) + yy[disk] * np.sin(a)) / 3.0)
            classes[k] = "fringed"
        else:
            classes[k] = "plain"
    return np.clip(img * 255, 0, 255).astype(np.uint8), lab, classes


def classify_screenshot(viewer, app, shot) -> None:
    from napari_nanodefect.widgets.classify import ClassifyWidget

    img, lab, truth = fringed_field()
    viewer.add_image(img, name="fringes", scale=(0.2, 0.2), units=("nm", "nm"),
                     metadata={"nanodefect": {"pixel_size_nm": 0.2}})
    viewer.add_labels(lab, name="fringes predictions", scale=(0.2, 0.2), units=("nm", "nm"))
    viewer.reset_view()
    cw = ClassifyWidget(viewer)
    # a user clicks a few of each kind: 6 fringed, 8 plain
    for name, n in (("fringed", 6), ("plain", 8)):
        for k in [k for k in sorted(truth) if truth[k] == name][:n]:
            cw.assign(k, name)
    cw.train()
    wait(app, lambda: not cw.busy, 120)
    cw.apply()
    wait(app, lambda: not cw.busy, 120)
    cw.click_mode.setChecked(True)
    shot("classify.png", cw, "Classify objects")


def main() -> None:
    import sys

    import napari
    from scipy import ndimage

    from napari_nanodefect.core.io.write import write_tiff
    from napari_nanodefect.core.synthetic import make_particles
    from napari_nanodefect.widgets.calibration import CalibrationWidget
    from napari_nanodefect.widgets.export import ExportWidget
    from napari_nanodefect.widgets.label import LabelWidget
    from napari_nanodefect.widgets.measure import MeasureWidget
    from napari_nanodefect.widgets.predict import PredictWidget
    from napari_nanodefect.widgets.train import TrainWidget

    OUT.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp())
    app = napari.qt.get_qapp()
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    viewer.scale_bar.visible = True

    def shot(name: str, dock, title: str):
        dw = viewer.window.add_dock_widget(dock, name=title, area="right")
        dw.setMinimumWidth(420)
        for _ in range(5):
            app.processEvents()
            time.sleep(0.05)
        save_small(viewer.screenshot(canvas_only=False, flash=False), OUT / name)
        viewer.window.remove_dock_widget(dw)

    if "--only-classify" in sys.argv:
        classify_screenshot(viewer, app, shot)
        viewer.close()
        return

    # calibration on a bright-field image (kept from the first tutorial)
    s_bf = make_particles(shape=(512, 640), mode="bf", seed=3)
    tif_bf = write_tiff(work / "synthetic_bf.tif", s_bf.image, pixel_size_nm=s_bf.pixel_size_nm)
    viewer.open(str(tif_bf), plugin="napari-nanodefect")
    viewer.reset_view()
    shot("calibration.png", CalibrationWidget(viewer), "Calibration")
    viewer.layers.clear()

    s = make_particles(shape=(512, 512), mode="haadf", seed=7)
    tif = write_tiff(work / "field.tif", s.image, pixel_size_nm=s.pixel_size_nm)
    viewer.open(str(tif), plugin="napari-nanodefect")
    viewer.reset_view()

    # label: two crops, a click on every particle inside them
    lw = LabelWidget(viewer)
    lw.start_crop()
    boxes = [(30, 30, 170, 200), (300, 280, 480, 480)]
    viewer.layers["field crops"].add_rectangles([np.array([[a, b], [c, d]], float) for a, b, c, d in boxes])
    for r0, c0, r1, c1 in boxes:
        for k, sl in enumerate(ndimage.find_objects(s.labels), start=1):
            if sl is None or sl[0].start < r0 or sl[1].start < c0 or sl[0].stop > r1 or sl[1].stop > c1:
                continue
            r, c = ndimage.center_of_mass(s.labels[sl] == k)
            lw.click((r + sl[0].start, c + sl[1].start))
    lw.click_mode.setChecked(True)
    viewer.layers.selection.active = viewer.layers["field particles"]
    shot("label.png", lw, "Calibrate & label")

    tw = TrainWidget(viewer)
    tw.out_edit.setText(str(work / "model"))
    tw.budget_spin.setValue(20)
    tw.extra_train_kwargs = {"validate_every_s": 2.0}
    tw.train_btn.click()
    wait(app, lambda: not tw.running, 120)
    shot("train.png", tw, "Train")

    pw = PredictWidget(viewer)
    pw.run_btn.click()
    wait(app, lambda: not pw.busy, 120)
    viewer.layers["field particles"].visible = False
    viewer.layers["field crops"].visible = False
    shot("predict.png", pw, "Predict")

    mw = MeasureWidget(viewer)
    mw.layer_box.setCurrentText("field predictions")
    mw.measure()
    mw.redraw_histogram()
    shot("measure.png", mw, "Measure")

    ew = ExportWidget(viewer)
    ew.export(work / "export")
    shot("export.png", ew, "Export")
    viewer.layers.clear()
    classify_screenshot(viewer, app, shot)
    viewer.close()


if __name__ == "__main__":
    main()
