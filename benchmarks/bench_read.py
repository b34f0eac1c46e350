"""Reading speed and memory: read_image vs. a bare tifffile.imread of the same file.

Run: ``python benchmarks/bench_read.py``. Prints, measured in this one run,
the time ratio read_image / tifffile.imread (the cost of vendor parsing, plane rule and
info-bar / scale-bar detection) and the peak RSS increase relative to the image size.
Real vendor files from ../shared/data/real are added when present.
"""

from __future__ import annotations

import subprocess
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
        print(f"{'file':34s} {'shape':>13s} {'imread s':>9s} {'no-detect s':>11s} {'read_image s':>12s} "
              f"{'ratio':>6s} {'ms/Mpx':>7s} {'pixel nm':>9s}")
        for f in files:
            t_bare = best_of(lambda: tifffile.imread(f, key=0))
            t_plain = best_of(lambda: read_image(f, detect_info_bar=False, detect_scale_bar=False))
            t_ours = best_of(lambda: read_image(f))
            m = read_image(f)
            mpx = m.data.size / 1e6
            print(f"{f.name[:34]:34s} {str(m.data.shape):>13s} {t_bare:9.4f} {t_plain:11.4f} {t_ours:12.4f} "
                  f"{t_ours / t_bare:6.1f} {1e3 * t_ours / mpx:7.2f} {m.pixel_size_nm:9.4g}")
        big = files[1]
        # VmHWM (not ru_maxrss, which keeps the parent's high-water mark across fork+exec)
        code = ("import re,sys\n"
                "hwm=lambda: int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))/2**20\n"
                "from napari_nanodefect import read_image\n"
                "b=hwm(); m=read_image(sys.argv[1]); print(b, hwm(), m.data.nbytes/2**30)")
        base, peak, nbytes = map(float, subprocess.run([sys.executable, "-c", code, str(big)], capture_output=True,
                                                        text=True, check=True).stdout.split())
        print(f"8192x8192 uint16 ({nbytes:.3f} GiB) in a fresh process: peak RSS {peak:.2f} GiB, "
              f"{base:.2f} GiB after imports; (peak - imports) / image size = {(peak - base) / nbytes:.2f}")


if __name__ == "__main__":
    main()
