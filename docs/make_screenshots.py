"""Regenerate the screenshots in docs/images (run under a display or xvfb-run).

    xvfb-run -a python docs/make_screenshots.py

Uses the synthetic samples only: real images in ../shared are not ours to publish.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent

def save_small(rgba: np.ndarray, path: Path, width: int = 960) -> None:
    im = Image.fromarray(rgba).convert("RGB")
    if im.width > width:
        im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
    im.quantize(colors=64, method=Image.MEDIANCUT).save(path, optimize=True)
    print(path, im.size, path.stat().st_size // 1024, "KiB")


def main() -> None:
    import napari

    from napari_nanodefect.widgets.calibration import CalibrationWidget

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 900)
    import tempfile

    from napari_nanodefect.core.io.write import write_tiff
    from napari_nanodefect.core.synthetic import make_particles

    s = make_particles(shape=(512, 640), mode="bf", seed=3)
    tif = write_tiff(Path(tempfile.mkdtemp()) / "synthetic_bf.tif", s.image, pixel_size_nm=s.pixel_size_nm)
    viewer.open(str(tif), plugin="napari-nanodefect")
    viewer.scale_bar.visible = True
    w = CalibrationWidget(viewer)
    viewer.window.add_dock_widget(w, name="Calibration", area="right")
    viewer.reset_view()
    napari.qt.get_qapp().processEvents()
    out = HERE / "images"
    out.mkdir(exist_ok=True)
    save_small(viewer.screenshot(canvas_only=False, flash=False), out / "calibration.png")
    viewer.close()


if __name__ == "__main__":
    main()
