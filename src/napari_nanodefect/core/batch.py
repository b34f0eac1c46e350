"""Batch prediction over folders of images: resumable, grouped, aggregated, scalable (Qt-free).

``run_batch(model, inputs, out)`` predicts every image (one image per task) and writes, per
image, what ``nanodefect predict`` writes (``<group>/<stem>_labels.tif``, ``<stem>.json``
LabelMe, ``<stem>_particles.csv``), and for the whole batch:

* ``manifest.json`` — per image: input path, size, mtime and SHA-256, the model's SHA-256,
  status (``ok`` / ``failed`` with the error), seconds, object count and its summary. It
  is rewritten atomically after every finished image, so a batch killed at any moment (a
  crash, Ctrl-C, a cluster job hitting its wall time) resumes where it stopped: a rerun
  skips images whose entry is ``ok`` for the same input and model and whose files exist,
  retries ``failed`` ones and does the rest. An image is marked ``ok`` only after all its
  files were written (each atomically), so nothing half-written is ever taken as done.
* ``images.csv`` — one row per image (group, status, count, d50, density, seconds, error).
* ``groups.csv`` — per group (sub-folder, or the ``group`` column of a CSV) and class: the
  number of images, particles, pooled interior-particle ECD statistics (d10/d50/d90, mean,
  std, log-normal fit) and density over the summed analysed area; a row ``class = all``
  per group and, with several groups, the group ``ALL``.
* ``histograms/<group>.png`` — the joint size distribution of each group, per class.

Scheduling uses existing engines: ``scheduler="local"`` runs ``workers`` processes on this
machine (:class:`concurrent.futures.ProcessPoolExecutor`, spawn); ``"tcp://host:8786"``
(or a :class:`distributed.Client`) submits one task per image to a dask.distributed
cluster. Each worker process loads the model once and keeps it; each uses the GPU when it
has one (``device="auto"``). A corrupt or unreadable image is reported as ``failed`` and
never stops the batch.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import NanodefectError

__all__ = ["BatchImage", "BatchResult", "collect_batch_images", "run_batch", "aggregate", "file_sha256",
           "model_sha256", "MANIFEST", "FORMAT"]

MANIFEST = "manifest.json"
FORMAT = "napari-nanodefect-batch"
_GLOB_CHARS = set("*?[")


# ----------------------------------------------------------------------------- inputs


@dataclass
class BatchImage:
    """One input: ``key`` (``<group>/<stem>``) names its outputs and manifest entry."""

    path: Path
    group: str
    key: str


def _is_image(p: Path) -> bool:
    from .io import SUPPORTED_SUFFIXES

    name = p.name.lower()
    return p.is_file() and not p.name.startswith(".") and (
        p.suffix.lower() in set(SUPPORTED_SUFFIXES) or name.endswith((".ome.tif", ".ome.tiff")))


def _read_groups(path: Path) -> dict[str, str]:
    import csv

    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise NanodefectError(f"cannot read the group table ({exc})", path) from exc
    if not rows:
        raise NanodefectError("the group table is empty", path)
    cols = set(rows[0])
    gcol = next((c for c in ("group", "sample") if c in cols), None)
    if "image" not in cols or gcol is None:
        raise NanodefectError("a group table needs the columns 'image' and 'group' (or 'sample')", path)
    out = {}
    for r in rows:
        img, grp = (r.get("image") or "").strip(), (r.get(gcol) or "").strip()
        if img and grp:
            out[img] = grp
    return out


def _safe(name: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_.+=@ " else "_" for ch in name).strip()
    return keep or "group"


def collect_batch_images(inputs: Iterable[str | os.PathLike], groups: str | os.PathLike | None = None,
                         exclude: Sequence[str | os.PathLike] = ()) -> list[BatchImage]:
    """The images of folders (searched recursively), glob patterns and files.

    Group of an image: with ``groups`` (a CSV with ``image`` and ``group`` or ``sample``
    columns; ``image`` is a file name, a path relative to the CSV, or the end of the
    image's path such as ``A/x.tif``), its row there
    (images not listed are ``ungrouped``); else its sub-folder relative to the folder given
    (``samples/A/x.tif`` -> ``A``; images directly inside -> the folder's own name), or for
    files and globs, the name of the folder holding them. ``exclude``: folders to skip
    (the output folder)."""
    excl = [Path(e).resolve() for e in exclude]
    found: list[tuple[Path, str]] = []
    for raw in inputs:
        s = str(raw)
        p = Path(s)
        if p.is_dir():
            root = p.resolve()
            for f in sorted(root.rglob("*")):
                if any(f.is_relative_to(e) for e in excl) or any(part.startswith(".") for part in f.relative_to(root).parts):
                    continue
                if _is_image(f):
                    rel = f.parent.relative_to(root)
                    found.append((f, str(rel).replace(os.sep, "/") if str(rel) != "." else root.name))
        elif p.is_file():
            found.append((p.resolve(), p.resolve().parent.name))
        elif _GLOB_CHARS & set(s):
            hits = sorted(Path(h) for h in glob.glob(s, recursive=True))
            found += [(h.resolve(), h.resolve().parent.name) for h in hits if _is_image(h)]
        else:
            raise NanodefectError("no such file or folder", p)
    if not found:
        raise NanodefectError("no images found in " + ", ".join(map(str, inputs)))
    table = None
    if groups is not None:
        gpath = Path(groups)
        table = _read_groups(gpath)
        by_path = {str((gpath.parent / k).resolve()): v for k, v in table.items()}
    seen: dict[str, int] = {}
    out: list[BatchImage] = []
    done_paths: set[Path] = set()
    for f, grp in found:
        if f in done_paths:
            continue
        done_paths.add(f)
        if table is not None:
            grp = by_path.get(str(f)) or next(
                (v for k, v in table.items() if "/" in k.replace(os.sep, "/") and f.as_posix().endswith("/" + k.replace(os.sep, "/").lstrip("./"))),
                None) or table.get(f.name) or "ungrouped"
        key = f"{_safe(grp)}/{f.stem}"
        if key in seen:  # same stem twice in a group (x.tif and x.png): keep both
            seen[key] += 1
            key = f"{key}~{seen[key]}"
        else:
            seen[key] = 0
        out.append(BatchImage(f, grp, key))
    return out


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def model_sha256(folder: str | os.PathLike | None) -> str:
    """SHA-256 over a model folder's ``config.json`` and weights (the starter when None)."""
    from .segment.model import WEIGHTS, default_model_dir

    folder = Path(folder) if folder is not None else default_model_dir()
    h = hashlib.sha256()
    for name in ("config.json", WEIGHTS):
        p = folder / name
        if not p.is_file():
            raise NanodefectError(f"not a model folder ({name} is missing)", folder)
        h.update(name.encode())
        h.update(file_sha256(p).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- the task


_MODELS: dict[tuple[str, str], Any] = {}


def _model_in_worker(model_dir: str | None, device: str, threads: int | None):
    """The model of this worker process, loaded on its first task and kept."""
    key = (str(model_dir), device)
    if key not in _MODELS:
        import torch

        if not threads:
            threads = _dask_worker_threads()
        _relax_dask_malloc_trim()
        if threads:
            # never more torch threads than cores per concurrent task: oversubscribed
            # OpenMP threads spin against each other (2 threads on a busy 2-core machine
            # ran 3-7x slower than 1)
            torch.set_num_threads(int(threads))
        from .segment.model import load_model

        _MODELS[key] = load_model(model_dir, device=device)
    return _MODELS[key]


def _relax_dask_malloc_trim() -> bool:
    """Undo dask's ``MALLOC_TRIM_THRESHOLD_=65536`` for this worker process (glibc only).

    dask's nanny starts workers with that variable to hand freed memory back to the OS
    quickly; it also fixes glibc's mmap threshold at 128 KiB, so every activation tensor
    of a CNN is mmapped and unmapped again: CPU inference ran 2-2.5x slower (0.8 -> 2.0 s
    per 256^2 image, measured). Back to glibc's usual 32 MiB mmap / 64 MiB trim thresholds;
    a worker's memory still returns to the OS above those."""
    if not os.environ.get("MALLOC_TRIM_THRESHOLD_") or not sys.platform.startswith("linux"):
        return False
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):  # not a dask worker: the user set it, keep it
        return False
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 64 << 20))
    except (OSError, AttributeError):  # musl or no libc: leave it
        return False


def _dask_worker_threads() -> int | None:
    """Cores per task slot when running inside a dask worker.

    The cores this process may use divided by the task threads of *all* dask workers on
    the same host (a LocalCluster of 2 single-thread workers on 2 cores gives 1 each; a
    lone 16-thread worker on a 16-core node gives 1 per task; one single-thread worker
    per SLURM node gives it all the node's cores)."""
    try:
        from distributed import get_worker

        w = get_worker()
    except (ImportError, ValueError):
        return None
    n = int(getattr(getattr(w, "state", None), "nthreads", None) or getattr(w, "nthreads", None) or 1)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // max(n, _threads_on_host(w)))


def _threads_on_host(worker: Any) -> int:
    """Task threads of all dask workers sharing this worker's host (0 when unknown)."""
    try:
        from distributed import get_client

        host = _host(worker.address)
        info = get_client().scheduler_info(n_workers=-1)
        return sum(int(ws.get("nthreads", 1)) for addr, ws in info.get("workers", {}).items()
                   if _host(addr) == host)
    except Exception:  # noqa: BLE001 - best effort: fall back to this worker alone
        return 0


def _host(address: str) -> str:
    a = str(address).split("://", 1)[-1]
    return a.rsplit(":", 1)[0] if ":" in a else a


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def process_image(task: dict[str, Any]) -> dict[str, Any]:
    """Predict one image and write its files (runs in a worker). Never raises: failures
    come back as ``status: failed`` with the error."""
    t0 = time.perf_counter()
    pid = os.getpid()
    try:
        from .segment.outputs import write_prediction
        from .segment.predict import predict_image

        model = _model_in_worker(task["model"], task.get("device", "auto"), task.get("threads"))
        t1 = time.perf_counter()
        pred = predict_image(model, Path(task["image"]), **task.get("predict_kwargs", {}))
        stem_dir = Path(task["out"]) / Path(task["key"]).parent
        files = write_prediction(pred, task["image"], stem_dir, stem=Path(task["key"]).name)
        s = files.extra["summary"]
        return {"status": "ok", "count": int(files.count), "seconds": time.perf_counter() - t0,
                "load_seconds": t1 - t0 if t1 - t0 > 0.05 else 0.0, "worker": pid,
                "summary": _jsonable({k: v for k, v in s.items() if k != "lognormal"} | {
                    "lognormal": s.get("lognormal")}),
                "scale": float(pred.scale), "scale_source": pred.scale_source, "precision": pred.precision}
    except Exception as exc:  # noqa: BLE001 - one bad image must not stop the batch
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return {"status": "failed", "error": f"{type(exc).__name__}: {msg}"[:500], "seconds": time.perf_counter() - t0,
                "worker": pid}


# ----------------------------------------------------------------------------- manifest


def _load_manifest(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"format": FORMAT, "images": {}}
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise NanodefectError(f"the batch manifest is unreadable ({exc}); move it away to start afresh", path) from exc
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("images"), dict):
        raise NanodefectError("not a napari-nanodefect batch manifest", path)
    return m


def _outputs_exist(out: Path, key: str) -> bool:
    base = out / key
    return all((base.parent / f"{base.name}{s}").is_file() for s in ("_labels.tif", ".json", "_particles.csv"))


@dataclass
class BatchResult:
    """What :func:`run_batch` did: keys done now, skipped (done before), failed."""

    out: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: bool = False
    seconds: float = 0.0
    manifest: dict[str, Any] = field(default_factory=dict)
    groups: Any = None  # pandas DataFrame from aggregate()

    @property
    def throughput(self) -> float:
        """Images predicted per second of wall time in this run."""
        return len(self.done) / self.seconds if self.seconds > 0 else float("nan")


def _executor(scheduler: Any, workers: int, threads: int | None):
    """(submit(fn, arg) -> future, as_completed(futures), shutdown(cancel)) for the scheduler."""
    if scheduler in (None, "local"):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        from .segment.jobs import _watch_parent

        # workers exit when the batch process dies (a SIGKILL of it leaves no orphans)
        ex = ProcessPoolExecutor(max_workers=max(1, int(workers)), mp_context=mp.get_context("spawn"),
                                 initializer=_watch_parent)

        def shutdown(cancel: bool) -> None:
            ex.shutdown(wait=not cancel, cancel_futures=cancel)

        return (lambda fn, a: ex.submit(fn, a)), as_completed, shutdown
    try:
        from distributed import Client, as_completed
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise NanodefectError("a dask scheduler needs dask.distributed: pip install 'napari-nanodefect[dask]'") from exc
    client = scheduler if isinstance(scheduler, Client) else None
    own = client is None
    if own:
        try:
            client = Client(str(scheduler), timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise NanodefectError(f"cannot reach the dask scheduler {scheduler} ({exc})") from exc

    def submit(fn, a):
        return client.submit(fn, a, key=f"nanodefect-{a['key']}-{a['input_sha256'][:12]}", pure=False)

    def shutdown(cancel: bool) -> None:
        if own:
            client.close()

    return submit, as_completed, shutdown


def run_batch(
    model: str | os.PathLike | None,
    inputs: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    scheduler: Any = "local",
    workers: int = 1,
    threads_per_worker: int | None = None,
    groups: str | os.PathLike | None = None,
    device: str = "auto",
    retry_failed: bool = True,
    predict_kwargs: dict[str, Any] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    histograms: bool = True,
) -> BatchResult:
    """Predict every image of ``inputs`` with ``model`` (a folder; None = the starter)
    into ``out``; resumable through ``out/manifest.json`` (see the module docstring).

    ``progress(info)`` is called after each image with ``done``, ``total``, ``key``,
    ``status``, ``eta_s``. ``should_stop()`` returning True stops submitting and cancels
    what has not started; finished images stay recorded.
    """
    from .atomic import atomic_write_json

    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = None if model in (None, "starter", "default") else str(Path(model).resolve())
    from .segment.model import read_config, default_model_dir

    read_config(Path(model_dir) if model_dir else default_model_dir())  # a clear error before any work
    mhash = model_sha256(model_dir)
    images = collect_batch_images(inputs, groups, exclude=[out])
    mpath = out / MANIFEST
    manifest = _load_manifest(mpath)
    manifest.update(format=FORMAT, model=model_dir or "starter", model_sha256=mhash)
    entries: dict[str, Any] = manifest["images"]
    res = BatchResult(out=out, manifest=manifest)

    # the prediction options (scale, pixel size, zoom...): a result made with other options
    # is redone (entries written before the options were recorded had none)
    settings = _jsonable(dict(predict_kwargs or {}))
    todo = []
    for im in images:
        st = im.path.stat()
        e = entries.get(im.key)
        same_file = e is not None and e.get("path") == str(im.path) and e.get("size") == st.st_size and (
            e.get("mtime_ns") == st.st_mtime_ns or e.get("input_sha256") == file_sha256(im.path))
        if e is not None and same_file and e.get("model_sha256") == mhash and e.get("predict_kwargs", {}) == settings:
            if e.get("status") == "ok" and _outputs_exist(out, im.key):
                res.skipped.append(im.key)
                continue
            if e.get("status") == "failed" and not retry_failed:
                res.failed.append(im.key)
                continue
        todo.append(im)
    n_cpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = threads_per_worker or (max(1, n_cpu // max(1, int(workers))) if scheduler in (None, "local") else None)
    tasks = []
    for im in todo:
        st = im.path.stat()
        tasks.append({"image": str(im.path), "key": im.key, "group": im.group, "out": str(out), "model": model_dir,
                      "device": device, "threads": threads, "predict_kwargs": dict(predict_kwargs or {}),
                      "input_sha256": file_sha256(im.path), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    manifest["groups_csv"] = str(Path(groups).resolve()) if groups else None
    atomic_write_json(mpath, manifest)

    if tasks:
        submit, as_completed, shutdown = _executor(scheduler, workers, threads)
        cancelled = False
        futures = {}
        try:
            for t in tasks:
                futures[submit(process_image, t)] = t
            t_run = time.perf_counter()
            for k, fut in enumerate(as_completed(list(futures)), start=1):
                t = futures[fut]
                try:
                    r = fut.result()
                except Exception as exc:  # noqa: BLE001 - a worker died (out of memory, killed)
                    r = {"status": "failed", "error": f"worker lost: {type(exc).__name__}: {exc}"[:500]}
                entry = {"path": t["image"], "group": t["group"], "size": t["size"], "mtime_ns": t["mtime_ns"],
                         "input_sha256": t["input_sha256"], "model_sha256": mhash, "predict_kwargs": settings,
                         "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **r}
                entries[t["key"]] = entry
                atomic_write_json(mpath, manifest)
                (res.done if r["status"] == "ok" else res.failed).append(t["key"])
                if progress is not None:
                    el = time.perf_counter() - t_run
                    progress({"done": k, "total": len(tasks), "key": t["key"], "status": r["status"],
                              "error": r.get("error"), "eta_s": el / k * (len(tasks) - k), "skipped": len(res.skipped)})
                if should_stop is not None and should_stop():
                    cancelled = True
                    break
        except KeyboardInterrupt:
            cancelled = True
            shutdown(True)
            raise
        finally:
            if cancelled:
                for f in futures:
                    if not f.done():
                        f.cancel()
            shutdown(cancelled)
        res.cancelled = cancelled
    res.seconds = time.perf_counter() - t_start
    res.groups = aggregate(out, manifest, histograms=histograms)
    return res


# ----------------------------------------------------------------------------- aggregation


def _group_stats(table, areas_um2: float, n_images: int, count_est: float) -> dict[str, Any]:
    from .measure.population import lognormal_fit

    inner = table[(table["region"] >= 0) & ~table["touches_edge"].astype(bool)] if len(table) else table
    col = "ecd_nm" if len(inner) and inner["ecd_nm"].notna().all() else "ecd_px"
    d = inner[col].to_numpy(np.float64) if len(inner) else np.zeros(0)
    d = d[np.isfinite(d)]
    q = np.percentile(d, [10, 50, 90]) if d.size else [None] * 3
    fit = lognormal_fit(d) if d.size >= 3 else {}
    return {"n_images": n_images, "count": int(len(table)), "count_interior": int(d.size),
            "count_estimated": float(count_est), "analysed_area_um2": areas_um2 or None,
            "density_per_um2": count_est / areas_um2 if areas_um2 else None, "size_column": col,
            "d10": q[0], "d50": q[1], "d90": q[2], "mean": float(d.mean()) if d.size else None,
            "std": float(d.std(ddof=1)) if d.size > 1 else None,
            "lognormal_median": float(np.exp(fit["mu"])) if fit.get("mu") is not None else None,
            "lognormal_sigma": fit.get("sigma")}


def aggregate(out: str | os.PathLike, manifest: dict[str, Any] | None = None, histograms: bool = True):
    """Write ``images.csv``, ``groups.csv`` and ``histograms/<group>.png`` from the
    manifest and the per-image particle tables of ``out``. Returns the groups table."""
    import pandas as pd

    from .atomic import atomic_write_text
    from .measure.histogram import save_histogram

    out = Path(out)
    manifest = manifest or _load_manifest(out / MANIFEST)
    rows, tables = [], {}
    for key, e in sorted(manifest["images"].items()):
        s = e.get("summary") or {}
        rows.append({"key": key, "group": e.get("group"), "image": e.get("path"), "status": e.get("status"),
                     "count": e.get("count"), "d50_nm": s.get("d50_nm"), "density_per_um2": s.get("density_per_um2"),
                     "pixel_size_nm": s.get("pixel_size_nm"), "seconds": e.get("seconds"), "error": e.get("error")})
        if e.get("status") == "ok":
            csv = out / f"{key}_particles.csv"
            try:
                t = pd.read_csv(csv)
            except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
                continue
            t.insert(0, "image", key)
            tables[key] = (t, e)
    atomic_write_text(out / "images.csv", pd.DataFrame(rows).to_csv(index=False, float_format="%.6g"))
    by_group: dict[str, list] = {}
    for key, (t, e) in tables.items():
        by_group.setdefault(str(e.get("group")), []).append((t, e))
    if len(by_group) > 1:
        by_group["ALL"] = [x for g in list(by_group) for x in by_group[g]]
    grows = []
    for g, items in by_group.items():
        table = pd.concat([t for t, _ in items], ignore_index=True)
        if "class" not in table:
            table["class"] = "particle"
        table["class"] = table["class"].astype(str)
        area = sum(((e.get("summary") or {}).get("analysed_area_um2") or 0.0) for _, e in items)
        per_img = [(e.get("summary") or {}) for _, e in items]
        est_all = sum((s.get("count_estimated") or s.get("count") or 0) for s in per_img)
        grows.append({"group": g, "class": "all", **_group_stats(table, area, len(items), est_all)})
        for c in sorted(set(table["class"])):
            est = sum(((s.get("per_class") or {}).get(c, {}).get("count_estimated") or 0) for s in per_img)
            grows.append({"group": g, "class": c, **_group_stats(table[table["class"] == c], area, len(items), est)})
        if histograms and len(table):
            ps = {(e.get("summary") or {}).get("pixel_size_nm") for _, e in items}
            summary = {"pixel_size_nm": 1.0 if None not in ps else None, "edge_correction": "exclude",
                       "count_edge_touching": int(table["touches_edge"].astype(bool).sum()), "per_class": {}}
            from .measure.population import lognormal_fit

            for c in sorted(set(table["class"])):
                col = "ecd_nm" if summary["pixel_size_nm"] else "ecd_px"
                inner = table[(table["class"] == c) & ~table["touches_edge"].astype(bool) & (table["region"] >= 0)]
                d = inner[col].to_numpy(np.float64)
                summary["per_class"][c] = {"lognormal": lognormal_fit(d[np.isfinite(d)]) if len(d) >= 3 else {}}
            save_histogram(out / "histograms" / f"{_safe(g)}.png", table, summary,
                           title=f"{g}: {len(items)} images")
    gt = pd.DataFrame(grows)
    atomic_write_text(out / "groups.csv", gt.to_csv(index=False, float_format="%.6g"))
    return gt
