"""Batch throughput and resume (issue 8).

    python benchmarks/bench_batch.py [--n 200] [--size 256] [--throughput-n 24] [--json out.json]

1. Throughput: the same ``--throughput-n`` synthetic images predicted by ``run_batch`` with
   1 and with 2 local worker processes (each worker gets cores / workers torch threads);
   printed as images/s and the ratio 2 workers / 1 worker, measured in this run. With a
   dask LocalCluster of the same size as a third line (scheduler overhead).
2. Resume: a ``--n``-image batch (``nanodefect batch`` in a subprocess) is killed with
   SIGKILL (process group, workers too) once about half the images are done; the rerun
   must skip exactly the finished ones, do the rest, and give label images identical to
   an uninterrupted run's (checked on every image).

Run it on an otherwise idle machine: torch threads are set to cores / workers, and any other
busy process oversubscribes them (2 threads on a busy 2-core machine ran 3-7x slower).
The images are synthetic HAADF fields (``make_particles``) with the shipped starter model.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_images(root: Path, n: int, size: int, groups: int = 4) -> None:
    from napari_nanodefect.core.io.write import write_tiff
    from napari_nanodefect.core.synthetic import make_particles

    for i in range(n):
        d = root / f"sample{i % groups}"
        d.mkdir(parents=True, exist_ok=True)
        s = make_particles(shape=(size, size), n=max(8, size * size // 3000), seed=i, median_diameter_nm=8.0)
        write_tiff(d / f"field{i:04d}.tif", s.image, pixel_size_nm=s.pixel_size_nm)


def throughput(src: Path, work: Path, workers: int, scheduler="local", threads=None) -> tuple[float, float]:
    """(images/s over the whole run, images/s once running: from the first finished image
    to the last, so worker start-up and model loading are left out)."""
    from napari_nanodefect.core.batch import run_batch

    out = work / f"tp_{workers}_{'local' if scheduler == 'local' else 'dask'}"
    stamps: list[float] = []
    res = run_batch(None, [src], out, workers=workers, scheduler=scheduler, histograms=False, threads_per_worker=threads,
                    progress=lambda info: stamps.append(time.perf_counter()))
    assert len(res.done) and not res.failed, res.failed
    # with w workers the first w images finish about together: steady state from the w-th
    k = min(workers, len(stamps) - 1)
    steady = (len(stamps) - k) / (stamps[-1] - stamps[k - 1]) if len(stamps) > k else float("nan")
    return res.throughput, steady


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--throughput-n", type=int, default=24)
    ap.add_argument("--skip-dask", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    out: dict = {"cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}

    # 1. throughput -------------------------------------------------------------------
    tp_src = work / "tp_in"
    make_images(tp_src, args.throughput_n, args.size)
    t1, s1 = throughput(tp_src, work, 1)
    t2, s2 = throughput(tp_src, work, 2)
    out.update(images_per_s_1_worker=t1, images_per_s_2_workers=t2, ratio_2_vs_1=t2 / t1,
               steady_images_per_s_1_worker=s1, steady_images_per_s_2_workers=s2, steady_ratio_2_vs_1=s2 / s1)
    print(f"{args.throughput_n} images of {args.size}x{args.size} px, {out['cpus']} cores, starter model")
    print(f"  1 local worker : {t1:.2f} images/s whole run, {s1:.2f} images/s once started")
    print(f"  2 local workers: {t2:.2f} images/s whole run, {s2:.2f} images/s once started")
    print(f"  ratio 2 / 1 workers: {t2 / t1:.2f} whole run, {s2 / s1:.2f} once started")
    if not args.skip_dask:
        try:
            from distributed import LocalCluster

            with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
                td, sd = throughput(tp_src, work, 2, scheduler=cl.scheduler_address, threads=1)
            out.update(images_per_s_dask_2_workers=td, steady_images_per_s_dask_2_workers=sd)
            print(f"  dask LocalCluster, 2 workers: {td:.2f} images/s whole run, {sd:.2f} once started "
                  f"(ratio to 2 local workers once started {sd / s2:.2f})")
        except ImportError:
            print("  dask.distributed not installed: skipped")

    # 2. kill halfway and resume ----------------------------------------------------------
    src = work / "in"
    make_images(src, args.n, args.size)
    res_dir = work / "out"
    cmd = [sys.executable, "-m", "napari_nanodefect", "batch", "starter", str(src), "--out", str(res_dir),
           "--workers", "2", "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    man = res_dir / "manifest.json"
    n_ok = 0
    while proc.poll() is None:
        if man.exists():
            n_ok = sum(e["status"] == "ok" for e in json.loads(man.read_text())["images"].values())
            if n_ok >= args.n // 2:
                break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    t_first = time.perf_counter() - t0
    before = {k for k, e in json.loads(man.read_text())["images"].items() if e["status"] == "ok"}
    print(f"\n{args.n}-image batch, 2 workers: killed (SIGKILL) after {len(before)} images, {t_first:.0f} s")

    from napari_nanodefect.core.annotations import read_label_tiff
    from napari_nanodefect.core.batch import run_batch

    t0 = time.perf_counter()
    res = run_batch(None, [src], res_dir, workers=2)
    t_second = time.perf_counter() - t0
    ok_skip = set(res.skipped) == before
    ok_done = len(res.done) + len(res.skipped) == args.n and not res.failed
    print(f"  rerun: {len(res.skipped)} skipped (= finished before the kill: {ok_skip}), {len(res.done)} predicted, "
          f"{len(res.failed)} failed, {t_second:.0f} s")
    clean = run_batch(None, [src], work / "clean", workers=2, histograms=False)
    same = 0
    for key in clean.done:
        a = read_label_tiff(res_dir / f"{key}_labels.tif").labels
        b = read_label_tiff(work / "clean" / f"{key}_labels.tif").labels
        same += int(np.array_equal(a, b))
    print(f"  label images identical to an uninterrupted run: {same}/{len(clean.done)}")
    out.update(n=args.n, killed_after=len(before), rerun_skipped=len(res.skipped), rerun_done=len(res.done),
               skipped_equals_finished=ok_skip, all_done=ok_done, identical=same, clean_done=len(clean.done),
               clean_images_per_s=clean.throughput)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0 if (ok_skip and ok_done and same == len(clean.done)) else 1


if __name__ == "__main__":
    sys.exit(main())
