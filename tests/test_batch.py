"""``nanodefect batch`` / core.batch: folders, groups, manifest, resume after a kill,
aggregated statistics, corrupt images, dask.distributed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_nanodefect.core.annotations import read_label_tiff
from napari_nanodefect.core.batch import MANIFEST, collect_batch_images, run_batch
from napari_nanodefect.core.errors import NanodefectError
from napari_nanodefect.core.io.write import write_tiff
from napari_nanodefect.core.synthetic import make_particles


def _make_images(root: Path, groups: dict[str, int], size: int = 192, seed0: int = 0) -> list[Path]:
    paths = []
    k = seed0
    for g, n in groups.items():
        d = root / g
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            s = make_particles(shape=(size, size), n=14, seed=k, median_diameter_nm=8.0)
            paths.append(write_tiff(d / f"img{i}.tif", s.image, pixel_size_nm=s.pixel_size_nm))
            k += 1
    return paths


def test_collect_groups_by_subfolder_csv_and_glob(tmp_path):
    _make_images(tmp_path / "in", {"A": 2, "B/deep": 1}, size=32)
    (tmp_path / "in" / "notes.txt").write_text("hello")  # a text file that is not an STM map
    (tmp_path / "in" / "A" / "img0.png").write_bytes(b"\x89PNG not really")  # same stem as img0.tif
    out = tmp_path / "in" / "results"
    out.mkdir()
    write_tiff(out / "old.tif", np.zeros((8, 8), np.uint8))  # inside the output folder: excluded
    ims = collect_batch_images([tmp_path / "in"], exclude=[out])
    keys = sorted(i.key for i in ims)
    # .txt may be an STM height map: it is listed, and reported as failed if it is not one
    assert keys == ["A/img0", "A/img0~1", "A/img1", "B_deep/img0", "in/notes"]
    assert {i.group for i in ims if i.path.suffix == ".tif"} == {"A", "B/deep"}
    csv = tmp_path / "groups.csv"
    csv.write_text("image,sample\nA/img0.tif,catalyst-1\nimg1.tif,catalyst-2\n")
    ims = collect_batch_images([str(tmp_path / "in" / "A" / "*.tif")], groups=csv)
    assert {i.path.name: i.group for i in ims} == {"img0.tif": "catalyst-1", "img1.tif": "catalyst-2"}
    with pytest.raises(NanodefectError, match="no such file"):
        collect_batch_images([tmp_path / "missing"])
    with pytest.raises(NanodefectError, match="no images"):
        collect_batch_images([str(tmp_path / "*.nothing")])


@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    _make_images(root / "in", {"A": 2, "B": 2})
    (root / "in" / "B" / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 40)
    res = run_batch(None, [root / "in"], root / "out", workers=1)
    return root, res


def test_batch_outputs_groups_and_corrupt_image(batch_dir):
    from napari_nanodefect.core.segment.model import load_model
    from napari_nanodefect.core.segment.predict import predict_image

    root, res = batch_dir
    out = root / "out"
    assert sorted(res.done) == ["A/img0", "A/img1", "B/img0", "B/img1"]
    assert res.failed == ["B/broken"] and not res.skipped
    man = json.loads((out / MANIFEST).read_text())
    e = man["images"]["B/broken"]
    assert e["status"] == "failed" and "broken.tif" in e["error"]
    ok = man["images"]["A/img0"]
    assert ok["status"] == "ok" and len(ok["input_sha256"]) == 64 and ok["model_sha256"] == man["model_sha256"]
    # the same labels as predicting the image directly
    pred = predict_image(load_model(None, device="cpu"), root / "in" / "A" / "img0.tif")
    li = read_label_tiff(out / "A" / "img0_labels.tif")
    assert np.array_equal(li.labels > 0, pred.labels > 0) and li.labels.max() == pred.count == ok["count"]
    # groups.csv: counts are the sums of the per-image particle tables
    g = pd.read_csv(out / "groups.csv")
    for grp in ("A", "B"):
        n = sum(len(pd.read_csv(out / grp / f"img{i}_particles.csv")) for i in range(2))
        row = g[(g["group"] == grp) & (g["class"] == "all")].iloc[0]
        assert row["count"] == n and row["n_images"] == 2
        ecd = pd.concat([pd.read_csv(out / grp / f"img{i}_particles.csv") for i in range(2)])
        inner = ecd[(ecd["region"] >= 0) & ~ecd["touches_edge"].astype(bool)]["ecd_nm"]
        assert row["d50"] == pytest.approx(np.percentile(inner, 50), rel=1e-4)
        assert row["analysed_area_um2"] == pytest.approx(2 * 192 * 192 * 0.5 ** 2 * 1e-6, rel=1e-6)
    allrow = g[(g["group"] == "ALL") & (g["class"] == "all")].iloc[0]
    assert allrow["count"] == g[(g["group"].isin(["A", "B"])) & (g["class"] == "all")]["count"].sum()
    for name in ("A", "B", "ALL"):
        assert (out / "histograms" / f"{name}.png").stat().st_size > 1000
    imgs = pd.read_csv(out / "images.csv")
    assert len(imgs) == 5 and (imgs["status"] == "ok").sum() == 4


def test_rerun_skips_done_redoes_changed_and_retries_failed(batch_dir):
    root, _ = batch_dir
    out = root / "out"
    res = run_batch(None, [root / "in"], out, workers=1, retry_failed=False)
    assert sorted(res.skipped) == ["A/img0", "A/img1", "B/img0", "B/img1"] and res.failed == ["B/broken"]
    assert not res.done
    # a changed image and a lost output are redone; the failed one is retried (and fails again)
    s = make_particles(shape=(192, 192), n=20, seed=99, median_diameter_nm=8.0)
    write_tiff(root / "in" / "A" / "img1.tif", s.image, pixel_size_nm=s.pixel_size_nm)
    (out / "B" / "img0_particles.csv").unlink()
    res = run_batch(None, [root / "in"], out, workers=1)
    assert sorted(res.done) == ["A/img1", "B/img0"] and res.failed == ["B/broken"]
    assert sorted(res.skipped) == ["A/img0", "B/img1"]
    man = json.loads((out / MANIFEST).read_text())
    assert man["images"]["A/img1"]["count"] == read_label_tiff(out / "A" / "img1_labels.tif").labels.max()
    assert man["images"]["A/img1"]["predict_kwargs"] == {}
    from napari_nanodefect.core.segment.model import cpu_has_native_bf16

    # the arithmetic the network ran in is recorded (batch workers here run on the CPU)
    assert man["images"]["A/img1"]["precision"] == ("bfloat16" if cpu_has_native_bf16() else "float32")
    # other prediction options: everything is redone, once
    res = run_batch(None, [root / "in"], out, workers=1, retry_failed=False, predict_kwargs={"zoom": True})
    assert sorted(res.done) == ["A/img0", "A/img1", "B/img0", "B/img1"] and not res.skipped
    assert "zoom" in json.loads((out / MANIFEST).read_text())["images"]["A/img0"]["scale_source"]
    res = run_batch(None, [root / "in"], out, workers=1, retry_failed=False, predict_kwargs={"zoom": True})
    assert len(res.skipped) == 4 and not res.done
    # an entry from before the options were recorded counts as the defaults
    man = json.loads((out / MANIFEST).read_text())
    for e in man["images"].values():
        e.pop("predict_kwargs", None)
    (out / MANIFEST).write_text(json.dumps(man))
    res = run_batch(None, [root / "in"], out, workers=1, retry_failed=False)
    assert len(res.skipped) == 4 and not res.done


def _is_worker(pid: str) -> bool:
    try:
        return "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc to see the worker processes")
def test_killed_batch_resumes_to_the_same_result(tmp_path):
    _make_images(tmp_path / "in", {"S": 8}, size=160)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "napari_nanodefect", "batch", "starter", str(tmp_path / "in"), "--out", str(out),
           "--quiet", "--threads", "1"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    man = out / MANIFEST
    t0 = time.time()
    n_ok = 0
    while time.time() - t0 < 240:
        if man.exists():
            try:
                n_ok = sum(e["status"] == "ok" for e in json.loads(man.read_text())["images"].values())
            except (json.JSONDecodeError, KeyError):
                pytest.fail("the manifest was caught half-written")
        if n_ok >= 3 or proc.poll() is not None:
            break
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    os.kill(proc.pid, signal.SIGKILL)  # only the batch process: its workers must follow it
    proc.wait()
    try:
        deadline = time.time() + 10
        alive = workers
        while alive and time.time() < deadline:
            time.sleep(0.1)
            alive = [w for w in workers if _is_worker(w)]
        assert not alive, "worker processes outlived the killed batch"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    first = json.loads(man.read_text())["images"]
    done_before = sorted(k for k, e in first.items() if e["status"] == "ok")
    assert 3 <= len(done_before) < 8, "the kill should land halfway"
    res = run_batch(None, [tmp_path / "in"], out, workers=1)
    assert sorted(res.skipped) == done_before
    assert sorted(res.done) == sorted(set(f"S/img{i}" for i in range(8)) - set(done_before))
    # identical to an uninterrupted run
    clean = run_batch(None, [tmp_path / "in"], tmp_path / "clean", workers=1, histograms=False)
    assert len(clean.done) == 8
    for i in range(8):
        a = read_label_tiff(out / "S" / f"img{i}_labels.tif").labels
        b = read_label_tiff(tmp_path / "clean" / "S" / f"img{i}_labels.tif").labels
        assert np.array_equal(a, b)
    assert pd.read_csv(out / "groups.csv").equals(pd.read_csv(tmp_path / "clean" / "groups.csv"))


def test_dask_distributed_scheduler(tmp_path):
    distributed = pytest.importorskip("distributed")
    _make_images(tmp_path / "in", {"A": 3}, size=160)
    local = run_batch(None, [tmp_path / "in"], tmp_path / "local", workers=1, histograms=False)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
        assert cl.scheduler_address.startswith("tcp://")
        res = run_batch(None, [tmp_path / "in"], tmp_path / "dask", scheduler=cl.scheduler_address,
                        histograms=False)
    assert sorted(res.done) == sorted(local.done) and not res.failed
    man = json.loads((tmp_path / "dask" / MANIFEST).read_text())["images"]
    # one worker: one process, the model loaded once (by its first task only)
    assert len({e["worker"] for e in man.values()}) == 1
    assert sum(e["load_seconds"] > 0 for e in man.values()) == 1
    for i in range(3):
        a = read_label_tiff(tmp_path / "dask" / "A" / f"img{i}_labels.tif").labels
        b = read_label_tiff(tmp_path / "local" / "A" / f"img{i}_labels.tif").labels
        assert np.array_equal(a, b)
    with pytest.raises(NanodefectError, match="cannot reach the dask scheduler"):
        run_batch(None, [tmp_path / "in"], tmp_path / "nowhere", scheduler="tcp://127.0.0.1:9")


def _slot_threads(_):
    import os

    from napari_nanodefect.core.batch import _dask_worker_threads, _relax_dask_malloc_trim

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return _dask_worker_threads(), cpus, os.environ.get("MALLOC_TRIM_THRESHOLD_"), _relax_dask_malloc_trim()


def test_dask_threads_are_shared_by_all_workers_of_a_host():
    # two single-thread workers on one host must split the cores between them
    # (cores / own threads gave each all cores: 4 torch threads on 2 cores, 2.5x slower)
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
        with distributed.Client(cl) as client:
            got, cpus, trim_env, relaxed = client.submit(_slot_threads, 0, pure=False).result()
    assert got == max(1, cpus // 2)
    # dask starts workers with MALLOC_TRIM_THRESHOLD_ (2-2.5x slower CPU inference); undone there
    if sys.platform.startswith("linux") and trim_env:
        assert relaxed is True
    here = _slot_threads(0)
    assert here[0] is None and here[3] is False  # not inside a dask worker: nothing touched


def test_cli_batch_reports_and_exit_status(tmp_path, capsys):
    from napari_nanodefect.cli import main

    _make_images(tmp_path / "in", {"A": 1}, size=128)
    assert main(["batch", "starter", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "1 images predicted, 0 already done (skipped), 0 failed" in text and "A: 1 images" in text
    (tmp_path / "in" / "A" / "bad.tif").write_bytes(b"not a tiff at all")
    assert main(["batch", "starter", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    text = capsys.readouterr().out
    assert "0 images predicted, 1 already done (skipped), 1 failed" in text and "A/bad" in text
    assert main(["batch", str(tmp_path / "nomodel"), str(tmp_path / "in"), "--out", str(tmp_path / "o2")]) == 2


def test_cli_batch_tta_reaches_the_prediction(tmp_path, capsys):
    """``--tta``: each image is predicted with the four flipped views averaged (the same labels as
    ``predict_image(tta=True)``, not the single-view ones), and the option is recorded in the manifest."""
    from napari_nanodefect.cli import main
    from napari_nanodefect.core.segment import default_model_dir, load_model, predict_image

    (path,) = _make_images(tmp_path / "in", {"A": 1}, size=128, seed0=5)
    assert main(["batch", "starter", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--quiet", "--tta"]) == 0
    man = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert man["images"]["A/img0"]["predict_kwargs"] == {"tta": True}
    got = read_label_tiff(tmp_path / "out" / "A" / "img0_labels.tif").labels
    model = load_model(default_model_dir())
    np.testing.assert_array_equal(got, predict_image(model, path, tta=True).labels)
    assert not np.array_equal(got, predict_image(model, path).labels)
