"""Train dock: fine-tune (or train) a particle model on the labelled crops of open images.

The dock gathers the training images from the layers (``"<image> particles"`` labels with
their classes, ``"<image> crops"`` rectangles; see :mod:`._common`), and runs
:func:`napari_nanodefect.core.segment.train.train` in a child process
(:class:`~napari_nanodefect.core.segment.jobs.TrainJob`) so the viewer stays responsive.
A 100-ms timer reads the job's messages: live train / validation loss and validation F1
curves, iteration and ETA; *Cancel* stops the run and keeps the best checkpoint so far.
The saved model becomes the viewer's model (``state_for(viewer).set_model``) for the
Predict and Calibrate & label docks.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QEvent, Qt, QTimer
from qtpy.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QRadioButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import NanodefectError
from ._common import (
    annotated_images,
    image_layers,
    image_path_of,
    state_for,
    training_image,
)

if TYPE_CHECKING:  # pragma: no cover
    import napari

MODEL_STARTER = "starter (fine-tune)"
MODEL_NEW = "new model"
MODEL_EXISTING = "existing folder…"
TASKS = ["particles"]
NO_LABELS = "label some particles first (Calibrate & label)"
POLL_MS = 100


def format_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "—"
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _stop_job(holder: list, grace_s: float = 1.0, *_args) -> None:
    """Stop the job in ``holder`` (used from ``destroyed``, where ``self`` is gone)."""
    job = holder[0] if holder else None
    if job is not None:
        try:
            job.close(grace_s=grace_s if isinstance(grace_s, (int, float)) else 1.0)
        except Exception:  # pragma: no cover - best effort while Qt tears down
            pass


class TrainWidget(QWidget):
    _was_docked = False

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self._job_holder: list = [None]
        self._user_choice: dict[str, bool] = {}
        self.history: list[dict[str, Any]] = []
        self.last_result: tuple[str, dict] | None = None
        #: extra keywords for :func:`train` (advanced: patch, batch_size, validate_every_s...)
        self.extra_train_kwargs: dict[str, Any] = {}

        # -- images
        self.image_list = QListWidget()
        self.image_list.setMaximumHeight(110)
        self.image_list.setToolTip("images to train on: their '<image> particles' labels inside '<image> crops'")
        self.image_list.itemChanged.connect(self._item_toggled)

        # -- model
        self.model_box = QComboBox()
        self.model_box.addItems([MODEL_STARTER, MODEL_NEW, MODEL_EXISTING])
        self.model_box.setToolTip("start from the shipped starter model, from scratch, or from a model folder")
        self.base_edit = QLineEdit()
        self.base_edit.setPlaceholderText("model folder to start from")
        self.base_btn = QPushButton("…")
        self.base_btn.setMaximumWidth(30)
        self.task_box = QComboBox()
        self.task_box.addItems(TASKS)
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("automatic: nanodefect_models/model-<date> next to the image")
        self.out_btn = QPushButton("…")
        self.out_btn.setMaximumWidth(30)

        # -- when to stop
        self.budget_radio = QRadioButton("time budget")
        self.epochs_radio = QRadioButton("epochs")
        self.budget_radio.setChecked(True)
        self._stop_group = QButtonGroup(self)
        self._stop_group.addButton(self.budget_radio)
        self._stop_group.addButton(self.epochs_radio)
        self.budget_spin = QSpinBox()
        self.budget_spin.setRange(1, 7 * 24 * 3600)
        self.budget_spin.setValue(60)
        self.budget_spin.setSuffix(" s")
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 100000)
        self.epochs_spin.setValue(20)
        self.device_box = QComboBox()
        self.device_box.addItems(["auto", "cpu", "cuda"])
        self.cuda_available = _cuda_available()
        if not self.cuda_available:
            self.device_box.model().item(2).setEnabled(False)
            self.device_box.setItemData(2, "no CUDA GPU available", Qt.ItemDataRole.ToolTipRole)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)

        self.train_btn = QPushButton("Train")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.setToolTip("stop now and keep the best checkpoint so far")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.summary_label = QLabel("")
        self.summary_label.setWordWrap(True)
        self.summary_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._build_plot()

        # -- layout
        form = QFormLayout()
        form.addRow("Images", self.image_list)
        form.addRow("Model", self.model_box)
        row = QHBoxLayout()
        row.addWidget(self.base_edit)
        row.addWidget(self.base_btn)
        form.addRow("Start from", row)
        form.addRow("Task", self.task_box)
        row = QHBoxLayout()
        row.addWidget(self.out_edit)
        row.addWidget(self.out_btn)
        form.addRow("Save to", row)
        row = QHBoxLayout()
        row.addWidget(self.budget_radio)
        row.addWidget(self.budget_spin)
        row.addWidget(self.epochs_radio)
        row.addWidget(self.epochs_spin)
        form.addRow("Stop after", row)
        form.addRow("Device", self.device_box)
        form.addRow("Seed", self.seed_spin)
        buttons = QHBoxLayout()
        buttons.addWidget(self.train_btn)
        buttons.addWidget(self.cancel_btn)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.status)
        lay.addWidget(self.canvas, 1)
        lay.addWidget(self.summary_label)

        # -- signals
        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)
        self.train_btn.clicked.connect(self.start_training)
        self.cancel_btn.clicked.connect(self.cancel_training)
        self.model_box.currentTextChanged.connect(lambda _: self._model_choice_changed())
        self.base_btn.clicked.connect(self._browse_base)
        self.out_btn.clicked.connect(self._browse_out)
        self.budget_radio.toggled.connect(lambda _: self._stop_choice_changed())
        self.viewer.layers.events.inserted.connect(self._layers_changed)
        self.viewer.layers.events.removed.connect(self._layers_changed)
        # stop the child when the dock goes away (``self`` is not usable in ``destroyed``)
        self.destroyed.connect(functools.partial(_stop_job, self._job_holder))
        self._model_choice_changed()
        self._stop_choice_changed()
        self.refresh_images()
        if not self._checked_names():
            self.status.setText(NO_LABELS if not annotated_images(self.viewer) else "")

    # -- plot --------------------------------------------------------------
    def _build_plot(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        # a fixed layout: tight_layout on every redraw costs ~100 ms of GUI time on a slow CPU
        self.figure = Figure(figsize=(4.0, 2.6), dpi=90)
        self.figure.subplots_adjust(left=0.15, right=0.85, bottom=0.17, top=0.96)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(200)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.ax = self.figure.add_subplot(111)
        self.ax_f1 = self.ax.twinx()
        (self.train_line,) = self.ax.plot([], [], "-", color="#4a7fb0", lw=1.2, label="train loss")
        (self.val_line,) = self.ax.plot([], [], "o-", color="#e07b39", lw=1.2, ms=3, label="val loss")
        (self.f1_line,) = self.ax_f1.plot([], [], "s--", color="#2ca02c", lw=1.0, ms=3, label="val F1")
        self.ax.set_xlabel("iteration", fontsize=8)
        self.ax.set_ylabel("loss", fontsize=8)
        self.ax_f1.set_ylabel("val F1", fontsize=8)
        self.ax_f1.set_ylim(0, 1.02)
        for a in (self.ax, self.ax_f1):
            a.tick_params(labelsize=7)
        lines = [self.train_line, self.val_line, self.f1_line]
        self.ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="upper right", frameon=False)

    def curve_data(self) -> dict[str, tuple[list, list]]:
        """The plotted points: name -> (iterations, values)."""
        return {name: (list(map(float, ln.get_xdata())), list(map(float, ln.get_ydata())))
                for name, ln in (("train_loss", self.train_line), ("val_loss", self.val_line), ("val_f1", self.f1_line))}

    def _redraw(self) -> None:
        def pts(key):
            xs = [h["iteration"] for h in self.history if _finite(h.get(key))]
            return xs, [h[key] for h in self.history if _finite(h.get(key))]

        self.train_line.set_data(*pts("train_loss"))
        self.val_line.set_data(*pts("val_loss"))
        self.f1_line.set_data(*pts("val_f1"))
        self.ax.relim()
        self.ax.autoscale_view()
        if self.history:
            self.ax.set_xlim(0, max(1, self.history[-1]["iteration"]) * 1.05)
        self.ax_f1.set_ylim(0, 1.02)
        self.canvas.draw_idle()

    # -- images ------------------------------------------------------------
    def _layers_changed(self, event=None) -> None:
        try:
            self.refresh_images()
        except RuntimeError:  # pragma: no cover - the Qt side was deleted already
            pass

    def refresh_images(self) -> None:
        """List the image layers; tick those with labelled particles (unless the user chose)."""
        annotated = {ly.name for ly in annotated_images(self.viewer)}
        names = [ly.name for ly in image_layers(self.viewer)]
        self.image_list.blockSignals(True)
        self.image_list.clear()
        for name in names:
            item = QListWidgetItem(name)
            item.setData(Qt.ItemDataRole.UserRole, name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            checked = self._user_choice.get(name, name in annotated)
            item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
            if name not in annotated:
                item.setToolTip("no labelled particles yet")
            self.image_list.addItem(item)
        self.image_list.blockSignals(False)

    def _item_toggled(self, item: QListWidgetItem) -> None:
        self._user_choice[item.data(Qt.ItemDataRole.UserRole)] = item.checkState() == Qt.CheckState.Checked

    def _checked_names(self) -> list[str]:
        out = []
        for i in range(self.image_list.count()):
            item = self.image_list.item(i)
            if item.checkState() == Qt.CheckState.Checked:
                out.append(item.data(Qt.ItemDataRole.UserRole))
        return out

    def selected_images(self) -> list:
        return [self.viewer.layers[n] for n in self._checked_names() if n in self.viewer.layers]

    # -- options -----------------------------------------------------------
    def _model_choice_changed(self) -> None:
        existing = self.model_box.currentText() == MODEL_EXISTING
        self.base_edit.setEnabled(existing)
        self.base_btn.setEnabled(existing)
        if existing and not self.base_edit.text() and self.state.model_path is not None:
            self.base_edit.setText(str(self.state.model_path))

    def _stop_choice_changed(self) -> None:
        budget = self.budget_radio.isChecked()
        self.budget_spin.setEnabled(budget)
        self.epochs_spin.setEnabled(not budget)

    def _browse_base(self) -> None:  # pragma: no cover - file dialog
        path = QFileDialog.getExistingDirectory(self, "Model folder to start from", self.base_edit.text())
        if path:
            self.base_edit.setText(path)

    def _browse_out(self) -> None:  # pragma: no cover - file dialog
        path = QFileDialog.getExistingDirectory(self, "Folder to save the model into", self.out_edit.text())
        if path:
            self.out_edit.setText(path)

    def output_folder(self, images: list) -> Path:
        """The folder typed in, else a new ``nanodefect_models/model-<date>`` folder."""
        from ..core.segment.jobs import default_model_folder

        text = self.out_edit.text().strip()
        if text:
            return Path(text).expanduser()
        first = image_path_of(images[0]) if images else None
        return default_model_folder(first)

    def train_kwargs(self) -> dict[str, Any]:
        """Keywords for :func:`train` from the dock's settings (raises NanodefectError)."""
        from ..core.segment.config import ModelConfig

        choice = self.model_box.currentText()
        kw: dict[str, Any] = {}
        if choice == MODEL_STARTER:
            kw["base"] = "starter"
        elif choice == MODEL_NEW:
            kw["base"] = None
            kw["config"] = ModelConfig(task=self.task_box.currentText())
        else:
            text = self.base_edit.text().strip()
            if not text:
                raise NanodefectError("choose the model folder to start from")
            folder = Path(text).expanduser()
            if not (folder / "config.json").is_file():
                raise NanodefectError("not a model folder (config.json is missing)", folder)
            kw["base"] = str(folder)
        if self.budget_radio.isChecked():
            kw["time_budget_s"] = float(self.budget_spin.value())
        else:
            kw["epochs"] = int(self.epochs_spin.value())
        device = self.device_box.currentText()
        if device == "cuda" and not self.cuda_available:
            raise NanodefectError("no CUDA GPU is available: use auto or cpu")
        kw["device"] = device
        kw["seed"] = int(self.seed_spin.value())
        kw.update(self.extra_train_kwargs)
        return kw

    # -- running -----------------------------------------------------------
    @property
    def job(self):
        return self._job_holder[0]

    @property
    def running(self) -> bool:
        return self.job is not None and not self.job.finished

    def start_training(self) -> bool:
        """Gather the images and settings and start the training process; False when refused."""
        from ..core.segment.jobs import TrainJob

        if self.running:
            return False
        self.refresh_images()
        images = self.selected_images()
        if not images:
            self._say(NO_LABELS if not annotated_images(self.viewer) else "tick at least one image to train on")
            return False
        try:
            items = [training_image(self.viewer, ly) for ly in images]
            n_obj = sum(len(it.annotations.objects) for it in items)
            if n_obj == 0:
                raise NanodefectError(NO_LABELS)
            kwargs = self.train_kwargs()
            out = self.output_folder(images)
            if out.exists() and not out.is_dir():
                raise NanodefectError("exists and is not a folder", out)
            if out.is_dir() and any(out.iterdir()) and not (out / "config.json").exists():
                raise NanodefectError("exists and is not a model folder; choose another folder", out)
        except NanodefectError as exc:
            self._say(str(exc), error=True)
            return False
        notes = [f"{ly.name}: no crops, the whole image is used (unlabelled particles count as background)"
                 for ly, it in zip(images, items) if not it.annotations.crops]
        self.history = []
        self.last_result = None
        self._redraw()
        self.summary_label.setText("")
        self.out_path = out
        job = TrainJob(items, out, **kwargs)
        try:
            job.start()
        except Exception as exc:  # pragma: no cover - cannot start a process at all
            self._say(f"could not start the training process: {exc}", error=True)
            return False
        if self.job is not None:
            self.job.close(grace_s=0)  # the previous, finished job: free its queue
        self._job_holder[0] = job
        self._register_task()
        self._set_running(True)
        n_crops = sum(len(it.annotations.crops) for it in items)
        self._say(f"starting: {n_obj} particles in {n_crops} crop(s) of {len(items)} image(s) -> {out}"
                  + ("\n" + "\n".join(notes) if notes else ""))
        self.timer.start()
        return True

    def cancel_training(self) -> None:
        if self.running:
            self.job.cancel()
            self.cancel_btn.setEnabled(False)
            self._say("cancelling: the best checkpoint so far is kept and saved…")

    def poll(self) -> None:
        """Read the job's messages (the 100-ms timer calls this)."""
        job = self.job
        if job is None:
            self.timer.stop()
            return
        progressed = False
        for kind, msg in job.poll():
            if kind == "started":
                self._say(f"training on {msg.get('device')} ({msg.get('threads')} thread(s)); preparing the data…")
            elif kind == "progress":
                self.history.append(msg)
                progressed = True
            elif kind == "done":
                self._finished_ok(msg)
            elif kind == "error":
                self._finished_error(msg)
        if progressed:
            self._redraw()
            if not job.finished:
                self._say(self._progress_text(self.history[-1]))
        if job.finished:
            self.timer.stop()

    def _progress_text(self, p: dict) -> str:
        parts = [f"iteration {p['iteration']} (epoch {p['epoch']:.1f})", f"loss {p['train_loss']:.3f}"]
        if _finite(p.get("val_loss")):
            parts.append(f"val loss {p['val_loss']:.3f}")
        if _finite(p.get("val_f1")):
            parts.append(f"val F1 {p['val_f1']:.3f}")
        parts.append(f"ETA {format_seconds(p.get('eta_s'))}")
        prefix = "cancelling… " if self.job is not None and self.job.cancel_requested else ""
        return prefix + ", ".join(parts)

    def _finished_ok(self, msg: dict) -> None:
        self.last_result = ("done", msg)
        self._update_task(True)
        self._set_running(False)
        s = msg.get("summary") or {}
        last = s.get("kept") == "last"
        f1 = s.get("final_val_f1") if last else s.get("best_val_f1")
        what = "final val F1" if last else "best val F1"
        lines = [
            f"{what} {f1:.3f}" if f1 is not None else f"{what} — (no validation cells)",
            ("kept the final weights" if last else "kept the best validated checkpoint"),
            f"{s.get('iterations', 0)} iterations (best at {s.get('best_iteration', 0)}), "
            f"{s.get('epochs', 0)} epochs, {s.get('seconds', 0):.1f} s on {s.get('device', '?')}",
        ]
        if msg.get("cancelled"):
            lines.append("cancelled: the best checkpoint so far was saved" if s.get("best_iteration")
                         else "cancelled before the first validation: the saved model is the starting model")
        path = msg.get("path")
        if path:
            lines.append(f"saved {path}")
            self.state.set_model(path)
            lines.append("selected as the model for Predict and Calibrate & label")
        self.summary_label.setText("\n".join(lines))
        self._say("cancelled" if msg.get("cancelled") else "done")

    def _finished_error(self, msg: dict) -> None:
        self.last_result = ("error", msg)
        self._update_task(False)
        self._set_running(False)
        text = msg.get("message") or "training failed"
        self._say(text, error=True)
        try:
            from napari.utils.notifications import show_error

            show_error(f"Train: {text}")
        except Exception:  # pragma: no cover
            pass

    # napari asks before closing a window with a busy task, and cancels it on close
    # (``Window._register_task_status`` is private napari API: used when present)
    def _register_task(self) -> None:
        self._task_id = None
        try:
            from napari.utils.task_status import Status

            self._task_id = self.viewer.window._register_task_status(
                "napari-nanodefect", Status.BUSY, "training a model",
                cancel_callback=functools.partial(_stop_job, self._job_holder))
        except Exception:  # pragma: no cover - napari without task status
            self._task_id = None

    def _update_task(self, ok: bool) -> None:
        if getattr(self, "_task_id", None) is None:
            return
        try:
            from napari.utils.task_status import Status

            self.viewer.window._update_task_status(self._task_id, Status.COMPLETED if ok else Status.FAILED)
        except Exception:  # pragma: no cover
            pass
        self._task_id = None

    def _set_running(self, running: bool) -> None:
        self.train_btn.setEnabled(not running)
        self.cancel_btn.setEnabled(running)
        for w in (self.image_list, self.model_box, self.task_box, self.out_edit, self.out_btn,
                  self.budget_radio, self.epochs_radio, self.device_box, self.seed_spin):
            w.setEnabled(not running)
        if running:
            self.base_edit.setEnabled(False)
            self.base_btn.setEnabled(False)
            self.budget_spin.setEnabled(False)
            self.epochs_spin.setEnabled(False)
        else:
            self._model_choice_changed()
            self._stop_choice_changed()

    def _say(self, text: str, error: bool = False) -> None:
        self.status.setStyleSheet("color: #ff6b6b;" if error else "")
        self.status.setText(text)

    # -- teardown ------------------------------------------------------------
    def shutdown(self, grace_s: float = 1.0) -> None:
        """Stop the training process (cancel, then kill after ``grace_s``)."""
        self.timer.stop()
        was_running = self.running
        if was_running:
            self._update_task(False)
        _stop_job(self._job_holder, grace_s)
        job = self.job
        if was_running and job is not None:
            job.poll()  # collects the end of the child (its "done", or how it was stopped)
            self._set_running(False)
            self._say("training stopped: the dock was closed")

    def event(self, ev) -> bool:
        # napari's dock "x" removes the dock and un-parents this widget (it is not closed
        # nor deleted): stop the training then; hiding the dock keeps it running
        if ev.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._was_docked = True
            elif self._was_docked:
                self._was_docked = False
                self.shutdown()
        return super().event(ev)

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover
        return False
