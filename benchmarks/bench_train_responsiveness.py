"""How responsive the Qt event loop stays while a model trains (the Train dock's design).

The same short fine-tuning of the starter model (data built like ``nanodefect demo``:
a synthetic HAADF micrograph, the ground-truth particles inside one crop) runs

- in a child process via :class:`~napari_nanodefect.core.segment.jobs.TrainJob`
  (``spawn``; torch threads in the child = 1 or 2), the GUI polling its queue every 100 ms;
- in a Python thread inside the GUI process (torch threads = 2 or 1), progress handed over
  through a ``queue.Queue`` polled the same way;
- and, as the reference, no training at all (idle event loop).

A ``QTimer`` (precise, 10 ms) records the time of every tick while training runs; a
responsive loop fires ~100 ticks a second with ~10 ms gaps. Reported: ticks fired /
expected, median, 95th-percentile and largest gap between ticks, the training
iterations/s (iterations / loop seconds from the model's summary) and the wall time
from pressing Train to the saved model.

    xvfb-run -a python benchmarks/bench_train_responsiveness.py [--budget 15] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

CROP = (24, 24, 280, 280)  # (x0, y0, x1, y1) px, the first crop of the demo


def training_item(seed: int = 0, size: int = 512, crop_px: int = 256):
    """A TrainingImage like the demo's: ground truth inside one crop of a synthetic image
    (default: the demo's first crop, 256 px, in a 512-px image)."""
    from napari_nanodefect.core.annotations import (
        AnnotationSet,
        Crop,
        LabelImage,
        labels_to_set,
    )
    from napari_nanodefect.core.segment.train import TrainingImage
    from napari_nanodefect.core.synthetic import make_particles
    from napari_nanodefect.demo import _inside

    s = make_particles(shape=(size, size), n=int(120 * (size / 512) ** 2), median_diameter_nm=12.0,
                       pixel_size_nm=0.5, mode="haadf", seed=seed)
    truth = labels_to_set(LabelImage(s.labels, s.classes, s.pixel_size_nm))
    crop = Crop(CROP[0], CROP[1], min(size, CROP[0] + crop_px), min(size, CROP[1] + crop_px))
    aset = AnnotationSet(image_height=size, image_width=size, pixel_size_nm=s.pixel_size_nm, crops=[crop],
                         objects=[o for o in truth.objects if _inside(o, crop)])
    return TrainingImage(aset, s.image, s.pixel_size_nm)


class TickRecorder:
    """Times of the ticks of a precise 10-ms QTimer."""

    def __init__(self, interval_ms: int = 10):
        from qtpy.QtCore import Qt, QTimer

        self.interval_ms = interval_ms
        self.times: list[float] = []
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(lambda: self.times.append(time.perf_counter()))

    def start(self) -> None:
        self.times = [time.perf_counter()]
        self.timer.start()

    def stop(self) -> dict:
        self.timer.stop()
        t = np.asarray(self.times + [time.perf_counter()])
        gaps = np.diff(t) * 1000
        dur = t[-1] - t[0]
        return {"ticks": len(self.times) - 1, "expected": dur * 1000 / self.interval_ms,
                "p50_ms": float(np.median(gaps)), "p95_ms": float(np.percentile(gaps, 95)),
                "max_ms": float(gaps.max()), "seconds": dur}


def run_loop(until, poll, timeout_s: float) -> None:
    """Run a Qt event loop, calling ``poll`` every 100 ms, until ``until()`` or timeout."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    t_end = time.perf_counter() + timeout_s

    def tick() -> None:
        poll()
        if until() or time.perf_counter() > t_end:
            loop.quit()

    timer = QTimer()
    timer.setInterval(100)
    timer.timeout.connect(tick)
    timer.start()
    loop.exec()
    timer.stop()


def _speed(summary: dict, reports: list[dict]) -> dict:
    """Iterations/s over the whole loop, and after the first progress report (warm)."""
    out = {"its_per_s": summary["iterations"] / summary["loop_seconds"], "warm_its_per_s": float("nan")}
    if len(reports) >= 2 and reports[-1]["elapsed_s"] > reports[0]["elapsed_s"]:
        out["warm_its_per_s"] = ((reports[-1]["iteration"] - reports[0]["iteration"])
                                 / (reports[-1]["elapsed_s"] - reports[0]["elapsed_s"]))
    return out


def measure_idle(seconds: float) -> dict:
    rec = TickRecorder()
    rec.start()
    t0 = time.perf_counter()
    run_loop(lambda: time.perf_counter() - t0 >= seconds, lambda: None, seconds + 5)
    nan = float("nan")
    return {**rec.stop(), "its_per_s": nan, "warm_its_per_s": nan, "wall_s": nan}


def measure_process(item, out: Path, budget: float, threads: int, **kw) -> dict:
    from napari_nanodefect.core.segment.jobs import TrainJob

    msgs: list = []
    rec = TickRecorder()
    t0 = time.perf_counter()
    with TrainJob([item], out, threads=threads, time_budget_s=budget, seed=0, **kw) as job:
        rec.start()
        job.start()
        run_loop(lambda: job.finished, lambda: msgs.extend(job.poll()), budget + 120)
        stats = rec.stop()
    kind, payload = msgs[-1]
    if kind != "done":
        raise RuntimeError(payload)
    reports = [m for k, m in msgs if k == "progress"]
    return {**stats, **_speed(payload["summary"], reports), "wall_s": time.perf_counter() - t0}


def measure_thread(item, out: Path, budget: float, threads: int, **kw) -> dict:
    from dataclasses import asdict

    import torch

    from napari_nanodefect.core.segment.train import train

    torch.set_num_threads(threads)
    q: queue.Queue = queue.Queue()
    result: dict = {}

    def work() -> None:
        try:
            res = train([item], out, time_budget_s=budget, seed=0, progress=lambda p: q.put(asdict(p)), **kw)
            result["summary"] = res.summary
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            result["error"] = exc

    rec = TickRecorder()
    t0 = time.perf_counter()
    rec.start()
    th = threading.Thread(target=work, daemon=True)
    th.start()
    reports: list = []

    def poll() -> None:
        while True:
            try:
                reports.append(q.get_nowait())
            except queue.Empty:
                break

    run_loop(lambda: not th.is_alive(), poll, budget + 120)
    stats = rec.stop()
    th.join()
    poll()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if "error" in result:
        raise result["error"]
    return {**stats, **_speed(result["summary"], reports), "wall_s": time.perf_counter() - t0}


COLUMNS = ("| training runs in | ticks fired / expected | median gap (ms) | p95 gap (ms) | max gap (ms) "
           "| it/s (whole loop) | it/s (after 1st report) | wall s (Train -> saved) |")


def _row(name: str, res: dict) -> str:
    return (f"| {name} | {res['ticks']}/{res['expected']:.0f} ({100 * res['ticks'] / res['expected']:.0f} %) "
            f"| {res['p50_ms']:.1f} | {res['p95_ms']:.1f} | {res['max_ms']:.0f} | {res['its_per_s']:.2f} "
            f"| {res['warm_its_per_s']:.2f} | {res['wall_s']:.1f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=15.0, help="training seconds per run (default 15)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each configuration (default 1)")
    ap.add_argument("--size", type=int, default=512, help="image side in px (default 512)")
    ap.add_argument("--crop", type=int, default=256, help="side of the labelled crop in px (default 256)")
    ap.add_argument("--validate-every", type=float, default=4.0, help="seconds between validations (default 4)")
    ap.add_argument("--only", default="", help="comma-separated subset: idle,process1,process2,thread2,thread1")
    args = ap.parse_args(argv)

    from qtpy.QtWidgets import QApplication, QLabel

    app = QApplication.instance() or QApplication(sys.argv)
    label = QLabel("training responsiveness benchmark")  # a visible window, like a viewer
    label.show()
    app.processEvents()

    import torch  # noqa: F401 - the GUI process of napari-nanodefect has torch imported

    item = training_item(size=args.size, crop_px=args.crop)
    c = item.annotations.crops[0]
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; data: {len(item.annotations.objects)} "
          f"particles in one {c.x1 - c.x0:g}x{c.y1 - c.y0:g} px crop of a {args.size}-px image, starter "
          f"fine-tuned {args.budget:g} s, validation every {args.validate_every:g} s", flush=True)
    kw = {"validate_every_s": args.validate_every}
    configs = {
        "idle": ("no training (event loop only)", lambda out: measure_idle(args.budget)),
        "process1": ("child process (TrainJob), 1 torch thread",
                     lambda out: measure_process(item, out, args.budget, 1, **kw)),
        "process2": ("child process (TrainJob), 2 torch threads",
                     lambda out: measure_process(item, out, args.budget, 2, **kw)),
        "thread2": ("thread in the GUI process, 2 torch threads",
                    lambda out: measure_thread(item, out, args.budget, 2, **kw)),
        "thread1": ("thread in the GUI process, 1 torch thread",
                    lambda out: measure_thread(item, out, args.budget, 1, **kw)),
    }
    only = [k for k in args.only.split(",") if k] or list(configs)
    rows: list[tuple[str, str, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for key in only:
                name, fn = configs[key]
                res = fn(Path(tmp) / f"{key}-{r}")
                rows.append((key, name, res))
                print("  " + _row(name, res), f"load {os.getloadavg()[0]:.2f}", flush=True)
    print()
    print(COLUMNS)
    print("|---|---|---|---|---|---|---|---|")
    for _, name, res in rows:
        print(_row(name, res))
    if args.repeats > 1:
        print("\nmedian over the repeats (max gap: the largest of all):\n")
        print(COLUMNS)
        print("|---|---|---|---|---|---|---|---|")
        for key in only:
            rs = [res for k, _, res in rows if k == key]
            med = {f: float(np.median([r[f] for r in rs])) for f in rs[0] if f != "max_ms"}
            med["max_ms"] = max(r["max_ms"] for r in rs)
            med["ticks"] = int(med["ticks"])
            print(_row(configs[key][0], med))
    label.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
