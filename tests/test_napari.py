"""napari side: manifest, reader (layer scale in nm), sample data, Calibration dock."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import real_file
from napari_nanodefect.core.io.write import write_tiff

pytestmark = pytest.mark.gui
PLUGIN = "napari-nanodefect"


def test_manifest_valid_and_discovered():
    import npe2

    pkg = Path(__import__("napari_nanodefect").__file__).parent
    mf = npe2.PluginManifest.from_file(pkg / "napari.yaml")
    assert mf.name == PLUGIN
    # every command resolves to an importable python object
    for cmd in mf.contributions.commands:
        module, _, attr = cmd.python_name.partition(":")
        assert callable(getattr(__import__(module, fromlist=[attr]), attr)), cmd.id
    pm = npe2.PluginManager.instance()
    pm.discover()
    assert PLUGIN in pm._manifests, "the napari.manifest entry point is not installed"


def test_reader_sets_scale_in_nm(make_napari_viewer, tmp_path):
    p = write_tiff(tmp_path / "cal.tif", np.arange(60 * 80, dtype=np.uint16).reshape(60, 80), pixel_size_nm=0.37)
    viewer = make_napari_viewer()
    layers = viewer.open(str(p), plugin=PLUGIN)
    (layer,) = layers
    np.testing.assert_allclose(layer.scale, [0.37, 0.37])
    assert [str(u) for u in layer.units] == ["nanometer", "nanometer"]
    assert layer.metadata["nanodefect"]["pixel_size_source"].startswith("ImageJ")


@pytest.mark.real
def test_reader_real_fei_tiff(make_napari_viewer):
    path = real_file("imageio-binaries", "images", "fei-sem-rbc.tif")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    np.testing.assert_allclose(layer.scale, [7.70833, 7.70833], rtol=1e-4)
    assert layer.data.shape == (1094, 1536)
    assert layer.metadata["nanodefect"]["valid_region"]["y1"] == 1024


@pytest.mark.real
def test_reader_real_dm3(make_napari_viewer):
    path = real_file("rosettasciio", "rsciio", "tests", "data", "tiff", "test_dm_image_um_unit.dm3")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    np.testing.assert_allclose(layer.scale, [168.68, 168.68], rtol=0.01)


def test_reader_refuses_bad_file_with_message(make_napari_viewer, tmp_path):
    from napari_nanodefect._napari import get_reader

    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00garbage")
    reader = get_reader(str(bad))
    with pytest.raises(ValueError, match="broken.tif"):
        reader(str(bad))
    assert get_reader(str(tmp_path / "notes.docx")) is None


def test_sample_data(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "haadf")
    image, labels = viewer.layers
    np.testing.assert_allclose(image.scale, [0.5, 0.5])
    assert labels.data.max() > 50  # ground-truth particles
    assert image.data.shape == labels.data.shape == (512, 512)


def test_calibration_widget_typed_and_scale_bar_line(make_napari_viewer):
    from napari_nanodefect.widgets.calibration import LINE_LAYER, CalibrationWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((100, 300), np.uint8), name="raw")
    w = CalibrationWidget(viewer)
    assert w.layer_box.currentText() == "raw"
    assert "unknown" in w.size_label.text()

    w.spin.setValue(2.5)
    w.apply_btn.click()
    np.testing.assert_allclose(viewer.layers["raw"].scale, [2.5, 2.5])
    assert viewer.layers["raw"].metadata["nanodefect"]["pixel_size_source"] == "user (typed)"

    # measure: a 240-px line along a bar that says 600 nm -> 2.5 nm/px ... then 300 nm -> 1.25
    w.draw_btn.click()
    shapes = viewer.layers[LINE_LAYER]
    shapes.add_lines(np.array([[90.0, 20.0], [90.0, 260.0]]))
    w.bar_text.setText("300 nm")
    w.use_line_btn.click()
    assert viewer.layers["raw"].metadata["nanodefect"]["pixel_size_nm"] == pytest.approx(1.25)
    np.testing.assert_allclose(viewer.layers["raw"].scale, [1.25, 1.25])
    assert "scale bar" in viewer.layers["raw"].metadata["nanodefect"]["pixel_size_source"]

    w.bar_text.setText("no unit here")
    w.use_line_btn.click()
    assert "unit" in w.status.text()
    assert viewer.layers["raw"].metadata["nanodefect"]["pixel_size_nm"] == pytest.approx(1.25)


def test_every_dock_opens_from_the_plugin_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    got = {}
    for title in ["Calibrate & label", "Train", "Predict", "Measure", "Export", "Defects & ordering"]:
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, title)
        got[title] = type(widget).__name__
    assert got == {"Calibrate & label": "LabelWidget", "Train": "TrainWidget", "Predict": "PredictWidget",
                   "Measure": "MeasureWidget", "Export": "ExportWidget", "Defects & ordering": "DefectsWidget"}
