"""Train dock and the child-process training job (TrainJob).

The child process is started with ``spawn`` and imports torch (a few seconds each), so
the runs here are short: tiny data, patch 64, budgets of a few seconds.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_nanodefect.core.annotations import (
    AnnotationSet,
    Crop,
    LabelImage,
    labels_to_set,
    write_labelme,
)
from napari_nanodefect.core.annotations.layerdata import crop_to_rectangle
from napari_nanodefect.core.segment import ModelConfig, load_model
from napari_nanodefect.core.segment.jobs import TrainJob, default_model_folder
from napari_nanodefect.core.segment.train import TrainingImage
from napari_nanodefect.core.synthetic import make_particles

pytestmark = pytest.mark.gui

TINY = dict(encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 8))
CROP = Crop(0, 0, 160, 160)
FAST = dict(base=None, config=ModelConfig(**TINY), batch_size=4, patch=64, validate_every_s=0.0, seed=1)


@pytest.fixture(scope="module")
def synth():
    return make_particles(shape=(256, 256), n=40, seed=3, pixel_size_nm=0.5)


def _item(s) -> TrainingImage:
    aset = labels_to_set(LabelImage(s.labels, s.classes))
    inside = lambda o: CROP.x0 <= o.bbox[0] and o.bbox[2] <= CROP.x1 and CROP.y0 <= o.bbox[1] and o.bbox[3] <= CROP.y1
    aset.crops = [CROP]
    aset.objects = [o for o in aset.objects if inside(o)]
    assert aset.objects
    return TrainingImage(aset, s.image, s.pixel_size_nm)


def _kinds(msgs):
    return [k for k, _ in msgs]


# ----------------------------------------------------------------------------- core: TrainJob

def test_trainjob_short_run_streams_progress_and_saves_a_loadable_model(synth, tmp_path):
    with TrainJob([_item(synth)], tmp_path / "m", epochs=1, **FAST) as job:
        assert not job.running and not job.finished
        job.start()
        msgs = job.wait(timeout=60)
        assert not job.running or job.join(10)
    kinds = _kinds(msgs)
    assert kinds[0] == "started" and kinds[-1] == "done", msgs[-1]
    assert "progress" in kinds
    prog = [m for k, m in msgs if k == "progress"]
    assert {"iteration", "train_loss", "val_loss", "val_f1", "eta_s", "epoch"} <= set(prog[0])
    done = msgs[-1][1]
    assert done["cancelled"] is False and done["summary"]["iterations"] == done["summary"]["iterations_per_epoch"]
    model = load_model(done["path"], device="cpu")
    assert model.config.classes == ["particle"] and model.config.training["iterations"] > 0
    assert job.poll() == []  # nothing after the final message


def test_trainjob_cancel_keeps_and_saves_the_best_checkpoint(synth, tmp_path):
    with TrainJob([_item(synth)], tmp_path / "m", epochs=10_000, patience=10**6, **FAST) as job:
        job.start()
        msgs = []
        t_end = time.perf_counter() + 60
        while "progress" not in _kinds(msgs) and time.perf_counter() < t_end:
            msgs += job.poll()
            time.sleep(0.05)
        assert "progress" in _kinds(msgs), msgs
        job.cancel()
        msgs += job.wait(timeout=30)
    assert msgs[-1][0] == "done", msgs[-1]
    done = msgs[-1][1]
    assert done["cancelled"] is True
    s = done["summary"]
    assert s["cancelled"] and s["best_iteration"] >= 1 and s["iterations"] < 10_000 * s["iterations_per_epoch"]
    assert load_model(done["path"], device="cpu").config.training["cancelled"] is True


def test_trainjob_bad_inputs_give_an_error_message_not_a_hang(synth, tmp_path):
    empty = AnnotationSet(image_height=256, image_width=256, crops=[CROP])
    missing = AnnotationSet(image_path="missing.tif", image_height=256, image_width=256, crops=[CROP],
                            objects=_item(synth).annotations.objects)
    ann = write_labelme(missing, tmp_path / "missing.json", embed_image=False)
    jobs = [TrainJob([TrainingImage(empty, synth.image)], tmp_path / "a", epochs=1, **FAST),
            TrainJob([ann], tmp_path / "b", epochs=1, **FAST)]
    for job in jobs:  # both children start together: one import wait
        job.start()
    try:
        results = [job.wait(timeout=60) for job in jobs]
    finally:
        for job in jobs:
            job.close()
    (k1, e1), (k2, e2) = results[0][-1], results[1][-1]
    assert k1 == "error" and "contain no objects" in e1["message"] and "Traceback" in e1["traceback"]
    assert k2 == "error" and "image of this annotation file was not found" in e2["message"]
    assert "missing.json" in e2["message"]  # NanodefectError verbatim, with the file
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_trainjob_killed_child_reports_how_it_ended(synth, tmp_path):
    job = TrainJob([_item(synth)], tmp_path / "m", epochs=10_000, **FAST).start()
    try:
        msgs = []
        t_end = time.perf_counter() + 60
        while "started" not in _kinds(msgs) and time.perf_counter() < t_end:
            msgs += job.poll()
            time.sleep(0.05)
        pid = job.pid
        job.kill()
        assert not job.running
        msgs += job.wait(timeout=10)
    finally:
        job.close()
    kind, err = msgs[-1]
    assert kind == "error" and "was stopped" in err["message"] and "no model was saved" in err["message"]
    import os

    with pytest.raises(OSError):
        os.kill(pid, 0)  # really gone


def test_default_model_folder(tmp_path):
    from datetime import datetime

    img = tmp_path / "a.tif"
    img.write_bytes(b"")
    now = datetime(2026, 1, 2, 3, 4, 5)
    p = default_model_folder(img, now)
    assert p == tmp_path / "nanodefect_models" / "model-20260102-030405"
    p.mkdir(parents=True)
    assert default_model_folder(img, now).name == "model-20260102-030405-2"
    assert default_model_folder(None, now).parent.parts[-2:] == (".nanodefect", "models")


# ----------------------------------------------------------------------------- widget

def _add_annotated_image(viewer, s, name="synth"):
    """An image with pixel size, its '<name> particles' labels inside one crop and the crop."""
    ps = s.pixel_size_nm
    image = viewer.add_image(s.image, name=name, scale=(ps, ps), metadata={"nanodefect": {"pixel_size_nm": ps}})
    lab = np.zeros(s.labels.shape, np.int32)
    for value, sl in enumerate(ndi.find_objects(s.labels), start=1):
        if sl is not None and sl[0].stop <= CROP.y1 and sl[1].stop <= CROP.x1:
            lab[s.labels == value] = value
    values = np.unique(lab[lab > 0])
    assert len(values) >= 5
    labels = viewer.add_labels(lab, name=f"{name} particles", scale=(ps, ps))
    import pandas as pd

    labels.features = pd.DataFrame({"index": values.astype(np.int64), "class": ["particle"] * len(values)})
    viewer.add_shapes([crop_to_rectangle(CROP)], shape_type="rectangle", name=f"{name} crops", scale=(ps, ps))
    return image


class TickGaps:
    """Times of a precise 10-ms QTimer's ticks (is the event loop still running?)."""

    def __init__(self):
        from qtpy.QtCore import Qt, QTimer

        self.times = []
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(10)
        self.timer.timeout.connect(lambda: self.times.append(time.perf_counter()))

    def start(self):
        self.times = [time.perf_counter()]
        self.timer.start()

    def stop(self):
        self.timer.stop()
        t = np.array(self.times + [time.perf_counter()])
        gaps = np.diff(t) * 1000
        return len(self.times) - 1, (t[-1] - t[0]) * 100, float(gaps.max()), float(np.percentile(gaps, 95))


def test_widget_trains_in_background_viewer_stays_responsive(make_napari_viewer, qtbot, synth, tmp_path):
    from napari_nanodefect.widgets._common import state_for
    from napari_nanodefect.widgets.train import TrainWidget

    viewer = make_napari_viewer()
    _add_annotated_image(viewer, synth)
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train")
    assert w._checked_names() == ["synth"]  # the image with labels is ticked by default
    w.out_edit.setText(str(tmp_path / "model"))
    w.budget_spin.setValue(4)
    w.extra_train_kwargs = {"validate_every_s": 0.5, "patch": 64, "batch_size": 4, "patience": 10**6}
    models = []
    state_for(viewer).model_changed.connect(models.append)

    ticks = TickGaps()
    ticks.start()
    qtbot.mouseClick(w.train_btn, __import__("qtpy.QtCore", fromlist=["Qt"]).Qt.MouseButton.LeftButton)
    assert w.running and not w.train_btn.isEnabled() and w.cancel_btn.isEnabled()
    qtbot.waitUntil(lambda: not w.running, timeout=60_000)
    n, expected, max_gap, p95 = ticks.stop()
    print(f"\nevent loop during training: {n}/{expected:.0f} ticks, p95 gap {p95:.1f} ms, max gap {max_gap:.0f} ms")
    # training in the GUI thread would block the loop for the whole budget (>= 4 s)
    assert n >= 0.5 * expected and max_gap < 1000, (n, expected, max_gap)

    assert w.last_result[0] == "done", w.last_result
    curves = w.curve_data()
    assert len(curves["train_loss"][0]) >= 2 and len(curves["val_loss"][0]) >= 2 and curves["val_f1"][0]
    assert state_for(viewer).model_path == tmp_path / "model" and models == [tmp_path / "model"]
    assert load_model(state_for(viewer).model_path, device="cpu").config.training["iterations"] > 0
    text = w.summary_label.text()  # the 4 s budget ran out: the final weights are kept
    assert "final val F1" in text and "kept the final weights" in text and "saved" in text
    assert w.train_btn.isEnabled() and not w.cancel_btn.isEnabled()


def test_widget_messages_without_labels_and_bad_settings(make_napari_viewer, synth, tmp_path):
    from napari_nanodefect.widgets.train import MODEL_EXISTING, NO_LABELS, TrainWidget

    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    assert w.status.text() == NO_LABELS
    viewer.add_image(synth.image, name="plain")
    assert w._checked_names() == []  # listed, not ticked: nothing labelled
    assert not w.start_training() and w.status.text() == NO_LABELS
    _add_annotated_image(viewer, synth)
    assert w._checked_names() == ["synth"]
    w.model_box.setCurrentText(MODEL_EXISTING)
    w.base_edit.setText(str(tmp_path))
    assert not w.start_training() and "not a model folder" in w.status.text()
    w.model_box.setCurrentText("starter (fine-tune)")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    w.out_edit.setText(str(tmp_path / "busy"))
    assert not w.start_training() and "not a model folder" in w.status.text()
    assert w.job is None and w.train_btn.isEnabled()
    assert not w.device_box.model().item(2).isEnabled() or w.cuda_available


def test_widget_shows_child_errors_and_stops_the_child_on_close(make_napari_viewer, qtbot, synth, tmp_path):
    from napari_nanodefect.widgets.train import TrainWidget

    viewer = make_napari_viewer()
    _add_annotated_image(viewer, synth)
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train")
    w.out_edit.setText(str(tmp_path / "model"))
    w.extra_train_kwargs = {"base": str(tmp_path / "no-such-model")}  # fails inside the child
    assert w.start_training()
    qtbot.waitUntil(lambda: not w.running, timeout=60_000)
    assert w.last_result[0] == "error" and "model folder not found" in w.status.text()
    assert w.train_btn.isEnabled()

    # a long run, then the dock is closed (its "x": napari removes the dock widget): the
    # child process must not survive it; closing the widget itself stops it too
    w.extra_train_kwargs = {"patch": 64, "batch_size": 4}
    w.budget_spin.setValue(600)
    assert w.start_training()
    job = w.job
    assert job.running
    viewer.window.remove_dock_widget(w)
    assert job.join(5) and not job.running
    assert not w.running and w.train_btn.isEnabled()
    assert w.start_training()
    job2 = w.job
    assert job2 is not job and job2.running
    w.close()
    assert job2.join(5) and not job2.running
