"""Reading speed and memory: read_image vs. a bare tifffile.imread of the same file.

Run: ``python benchmarks/bench_read.py``. Prints, measured in this one run,
the time ratio read_image / tifffile.imread (the cost of vendor parsing, plane rule and
info-bar / scale-bar detection) and the peak RSS increase relative to the image size.
Real vendor files from ../shared/data/real are added when present.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import REAL  # noqa: E402

from napari_nanodefect import read_image  # noqa: E402
from napari_nanodefect.core.io.write import write_tiff  # noqa: E402


def best_of(fn, n=3):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    files: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        for size, dtype in ((2048, np.uint8), (8192, np.uint16)):
            rng = np.random.default_rng(0)
            data = rng.integers(0, 200, (size, size)).astype(dtype)
            files.append(write_tiff(Path(tmp) / f"synthetic_{size}_{np.dtype(dtype).name}.tif", data, pixel_size_nm=0.5))
            del data
        for rel in (
            "imageio-binaries/images/fei-sem-rbc.tif",
            "rosettasciio/rsciio/tests/data/tiff/from_tiff_Zeiss_SEM.zip/ZEISS_SEM_multipage.tif",
            "grain-size-analysis-tools/ex_segmentation/sem_polished/sem_alpha_beta_ti_6al_4v.tif",
        ):
            if (REAL / rel).exists():
                files.append(REAL / rel)
        print(f"{'file':48s} {'shape':>14s} {'imread s':>9s} {'read_image s':>12s} {'ratio':>6s} {'pixel nm':>9s}")
        for f in files:
            t_bare = best_of(lambda: tifffile.imread(f, key=0))
            t_ours = best_of(lambda: read_image(f))
            m = read_image(f)
            print(f"{f.name[:48]:48s} {str(m.data.shape):>14s} {t_bare:9.3f} {t_ours:12.3f} {t_ours / t_bare:6.2f} {m.pixel_size_nm:9.4g}")
        big = files[1]
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        m = read_image(big)
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        nbytes = m.data.nbytes / 2**30
        print(f"8192x8192 uint16 ({nbytes:.2f} GiB): peak RSS {rss1:.2f} GiB (rose {rss1 - rss0:.2f} GiB before/after; "
              f"ratio peak/image {rss1 / nbytes:.2f})")


if __name__ == "__main__":
    main()
