"""Live re-measurement in the Measure dock (issue: Measure — <= 50 ms for 5 000 particles).

A real napari viewer (Qt; run headless under ``xvfb-run -a``) holds a 4096x4096 micrograph
and its ``"<image> particles"`` Labels layer with ~5 000 disks (radius 4-12 px), measured
once by the Measure dock. Then ~30 edits of each kind are made through the layer's own
editing API, as the mouse tools do:

- brush stroke: 5 brush dabs (size 7) dragged out of a particle with its label, one
  history item (``block_history``, as a mouse drag), one ``paint`` event at the end;
- erase: one dab of label 0 (size 9) on a particle;
- fill: a particle relabelled with a new value (``layer.fill``);
- polygon: a 16x22 px polygon with a new label over a particle (``layer.paint_polygon``);
- delete: the dock's *Delete selected label* (finds the pixels, ``data_setitem`` to 0);
- undo: ``layer.undo()`` of those edits (napari emits no ``paint`` event: the dock's hook).

Timed per edit: from the edit call, through the ``paint`` handler (or undo hook), to the
updated ``layer.features`` (``MeasureWidget.flush`` — what the zero-delay timer runs once
the edit returns to the event loop) — "edit+update"; and the dock's share alone ("update":
``ParticleMeasurer.update`` + ``layer.features``). The summary (``summarize``) and the
histogram redraw with its canvas paint — refreshed together at most every 100 ms by their
own timer — are timed separately. At the end the live table is
checked against a full ``measure_particles`` of the edited array.

Run: ``xvfb-run -a python benchmarks/bench_live_measure.py``. Timings on a shared 2-core
machine vary by about ±30 %.
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_measure import disks  # noqa: E402

TARGET_MS = 50.0
N_EDITS = 30


def main() -> None:
    import napari
    import pandas as pd
    from qtpy.QtWidgets import QApplication

    from napari_nanodefect.core.measure.particles import measure_particles
    from napari_nanodefect.widgets.measure import MeasureWidget

    ps = 0.5
    lab = disks((4096, 4096), 5200, seed=3)
    img = np.random.default_rng(1).integers(0, 255, lab.shape).astype(np.uint8)
    viewer = napari.Viewer(show=False)
    image = viewer.add_image(img, name="bench", scale=(ps, ps), metadata={"nanodefect": {"pixel_size_nm": ps}})
    layer = viewer.add_labels(lab, name="bench particles", scale=(ps, ps))
    w = MeasureWidget(viewer)
    viewer.window.add_dock_widget(w, name="Measure")
    app = QApplication.instance()
    app.processEvents()

    t0 = time.perf_counter()
    w.measure()
    full_s = time.perf_counter() - t0
    n = len(w.table())
    print(f"Measure dock, {n} particles on a 4096x4096 Labels layer ({ps} nm/px): full measure "
          f"{full_s:.2f} s (table + features + summary + histogram)")

    t = w.table().set_index("label")
    rng = np.random.default_rng(7)
    cy, cx = t["centroid_y_px"].astype(int), t["centroid_x_px"].astype(int)
    own = lab[cy.to_numpy(), cx.to_numpy()] == t.index.to_numpy()  # particles that hold their centre
    picks = iter(rng.permutation(t.index.to_numpy()[own]))
    next_label = [int(t.index.max()) + 1]

    def centre(k):
        r = t.loc[k]
        return int(r.centroid_y_px), int(r.centroid_x_px)

    def fresh():
        next_label[0] += 1
        return next_label[0]

    def stroke(k):
        y, x = centre(k)
        layer.brush_size = 7
        with layer.block_history():
            for dx in range(0, 15, 3):
                layer.paint((y, x + dx), k, refresh=False)

    def erase(k):
        y, x = centre(k)
        layer.brush_size = 9
        layer.paint((y + 3, x), 0)

    def fill(k):
        layer.fill(centre(k), fresh())

    def polygon(k):
        y, x = centre(k)
        layer.paint_polygon([[y - 8, x - 3], [y - 8, x + 18], [y + 7, x + 18], [y + 7, x - 3]], fresh())

    def delete(k):
        layer.selected_label = int(k)
        w.delete_selected()

    # one untimed edit first (first-use costs of the update path), as bench_measure does, and
    # a garbage collection: the setup (viewer, full measure) leaves enough objects that the
    # next full collection stalls ~0.3 s inside whichever edit triggers it
    layer.paint((5, 5), fresh())
    w.flush()
    app.processEvents()
    gc.collect()

    rows = []
    n_done = 0
    for name, edit in (("brush stroke", stroke), ("erase", erase), ("fill", fill), ("polygon", polygon),
                       ("delete", delete)):
        total, upd = [], []
        for _ in range(N_EDITS):
            k = int(next(picks))
            t0 = time.perf_counter()
            edit(k)
            w.flush()
            total.append(time.perf_counter() - t0)
            upd.append(w.last_update_s)
            n_done += 1
            app.processEvents()  # napari's redraw and the dock's timers, outside the timing
        rows.append((name, total, upd))
    total, upd = [], []
    for _ in range(N_EDITS):
        t0 = time.perf_counter()
        layer.undo()
        w.flush()
        total.append(time.perf_counter() - t0)
        upd.append(w.last_update_s)
        app.processEvents()
    rows.append(("undo", total, upd))

    summ, hist = [], []
    for _ in range(10):
        w._summary_dirty = True
        t0 = time.perf_counter()
        w.summary()
        summ.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        w.redraw_histogram()
        w.canvas.draw()
        hist.append(time.perf_counter() - t0)

    print(f"\n{'edit':<13} {'n':>3} {'edit+update ms':>15} {'max':>7} {'update ms':>10} {'max':>7} "
          f"{'ratio median':>13} {'ratio max':>10} {'updates > 50 ms':>16}")
    for name, total, upd in rows:
        tm, tx = 1000 * np.median(total), 1000 * np.max(total)
        um, ux = 1000 * np.median(upd), 1000 * np.max(upd)
        over = int(np.sum(np.asarray(upd) * 1000 > TARGET_MS))
        print(f"{name:<13} {len(total):>3} {tm:>15.1f} {tx:>7.1f} {um:>10.1f} {ux:>7.1f} "
              f"{um / TARGET_MS:>13.2f} {ux / TARGET_MS:>10.2f} {over:>16}")
    for name, ts in (("summary", summ), ("histogram", hist)):
        m, x = 1000 * np.median(ts), 1000 * np.max(ts)
        print(f"{name:<13} {len(ts):>3} {'':>15} {'':>7} {m:>10.1f} {x:>7.1f} {m / TARGET_MS:>13.2f} "
              f"{x / TARGET_MS:>10.2f}")
    print(f"target {TARGET_MS:.0f} ms (ratio = update time / target) for the dock's update of layer.features after an edit "
          "('update'); 'edit+update' adds napari's own edit (~20 ms per brush dab on a 4096x4096 layer). "
          "Summary and histogram (incl. canvas paint) are refreshed together by a 100 ms timer, not per edit.")

    live = w.table().sort_values("label").reset_index(drop=True)
    ref = measure_particles(np.asarray(layer.data), ps, image.data).sort_values("label").reset_index(drop=True)
    try:
        pd.testing.assert_frame_equal(live[ref.columns], ref, check_exact=False, rtol=1e-9, atol=1e-12)
        same = "yes"
    except AssertionError as e:  # pragma: no cover - reported, not raised
        same = f"NO: {e}"
    print(f"after {n_done} edits and {N_EDITS} undos: live table ({len(live)} rows) == full measure_particles: {same}")
    viewer.close()


if __name__ == "__main__":
    main()
