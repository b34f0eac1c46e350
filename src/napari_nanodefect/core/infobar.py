"""Detect the vendor data bar ("info bar") at the bottom of SEM images.

Zeiss, FEI/Thermo, Hitachi, JEOL, Tescan ... SEMs burn a band of full-width rows into
the bottom of the saved image: a flat (black, grey or white) background carrying text,
logos and a scale bar, separated from the micrograph by a sharp horizontal edge (often a
1-2 px line).  Those rows are not specimen and must be left out of every statistic.

Method (all vectorised row statistics, only the bottom ~30 % of the image is read):

1. **Row statistics** -- per row the modal value and the fraction of pixels at it
   (8-bit data: within +-2 grey levels, which tolerates JPEG ringing; other integer and
   float data: exact equality).  A row is *flat* when that fraction is >= 50 %: bar rows
   are mostly background, micrograph rows are textured (a few % for a noisy SEM image).
2. **Background run touching the bottom** -- the bar background ``M`` is the modal value
   shared by most flat rows among the last rows.  Walking up from the last row, rows
   that are flat *with the value M* extend the bar; other rows (text, logos, the scale
   bar, frame lines) are tolerated in streaks of at most 2.5 % of the image height.  The
   topmost background row, plus one separator/frame line of 1-3 rows right above it
   (a flat row of another value: the black Zeiss frame, the FEI grey line), gives ``y0``.
   If the sharpest row-to-row step lies 1-2 rows higher (JPEG blurs the first bar
   row), ``y0`` moves there.
3. **Checks** -- the height must lie between 2.5 % and 30 % of the image height; the
   bar's lowest background row must be near the last row; the rows just above ``y0``
   must not share the bar background; at least half of the band must be background or
   line rows; and there must be a sharp transition at ``y0``: an intensity step (median
   |row[y0] - row[y0-1]| over the columns >= 10 % of the range and well above the
   micrograph's own row-to-row change) or a flatness step (row ``y0`` almost constant,
   the rows above clearly textured).
4. **Separator-line fallback** -- when the background rows do not stop below 30 % of the
   height (a blanked or perfectly uniform image area above the bar, as in FEI
   "metadata-only" test files), accept a full-width constant separator line with a
   strong step to the row above, with a flat band below it that carries some content.

Uniform images, TEM/STEM images (textured to the last row) and synthetic particle
images on a flat background (flat rows all the way up, no separator line) give ``None``.
A ``vendor`` hint (FEI, Zeiss, Hitachi, JEOL, Tescan ...) only raises the confidence.
"""

from __future__ import annotations

import numpy as np

#: fraction of a row's pixels at its modal value above which the row counts as "flat"
FLAT_FRACTION = 0.5
#: allowed bar height, as a fraction of the image height
MIN_HEIGHT_FRACTION = 0.025
MAX_HEIGHT_FRACTION = 0.30
#: vendors known to burn a data bar into the image
BAR_VENDORS = ("fei", "thermo", "zeiss", "hitachi", "jeol", "tescan", "philips", "phenom", "leo", "aspex")


def _as_2d(data: np.ndarray) -> np.ndarray:
    a = np.asarray(data)
    while a.ndim > 2:
        a = a[..., 0] if a.shape[-1] in (3, 4) else a[0]
    return a


def _to_uint8_exact(a: np.ndarray) -> np.ndarray | None:
    """``a`` as uint8 without loss of distinct levels, when it holds <= 256 integer-like levels."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8)
    if a.dtype.kind in "iu":
        lo, hi = int(a.min()), int(a.max())
        if hi - lo <= 255:
            return (a.astype(np.int64) - lo).astype(np.uint8)
        return None
    if a.dtype.kind == "f":
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0.0 and hi <= 1.0 and hi > lo:
            s = a * 255.0
            r = np.rint(s)
            if np.all(np.abs(s - r) < 0.02):  # 8-bit data stored as [0, 1] floats
                return r.astype(np.uint8)
            return None
        if lo >= 0.0 and hi <= 255.0:
            # 8-bit (or 8-bit RGB luminance) stored as float: round to grey levels
            return np.rint(a).astype(np.uint8)
    return None


def _row_stats(block: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Per row: fraction of pixels at the modal value, the modal value, and the tolerance.

    8-bit-like data: the pixels within +-2 grey levels of the modal level (tolerates JPEG
    ringing); modes are grey levels and compare within +-2.  Other data:
    exact equality (via a row-wise sort); modes compare exactly.
    """
    block = _as_2d(block)
    n, w = block.shape
    if n == 0 or w == 0:
        return np.zeros(n), np.zeros(n), 0.0
    q = _to_uint8_exact(block)
    if q is not None:
        idx = (np.arange(n, dtype=np.int64)[:, None] * 256 + q).ravel()
        hist = np.bincount(idx, minlength=n * 256).reshape(n, 256)
        c = np.cumsum(np.pad(hist, ((0, 0), (3, 2))), axis=1)
        win = c[:, 5:] - c[:, :-5]  # win[:, v] = pixels within v-2 .. v+2
        mode = hist.argmax(axis=1)  # the exact modal grey level; the fraction counts +-2 around it
        return win[np.arange(n), mode] / float(w), mode.astype(np.float64), 2.0
    # exact modes by sorting, a few hundred rows at a time to bound the temporaries
    chunk = max(1, 2_000_000 // w)
    if n > chunk:
        parts = [_row_stats(block[i : i + chunk]) for i in range(0, n, chunk)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), 0.0
    s = np.sort(block, axis=1).ravel()
    brk = np.ones(s.size, dtype=bool)
    brk[1:] = s[1:] != s[:-1]
    brk[::w] = True
    starts = np.flatnonzero(brk)
    lengths = np.diff(np.append(starts, s.size))
    first = np.searchsorted(starts, np.arange(n, dtype=np.int64) * w)
    longest = np.maximum.reduceat(lengths, first)
    # position (in ``starts``) of the longest run of each row
    row_of = np.repeat(np.arange(n), np.diff(np.append(first, starts.size)))
    is_best = lengths == longest[row_of]
    best_pos = np.full(n, -1, dtype=np.int64)
    cand = np.flatnonzero(is_best)
    best_pos[row_of[cand][::-1]] = cand[::-1]  # first longest run per row
    mode = s[starts[best_pos]].astype(np.float64)
    return longest / float(w), mode, 0.0


def row_flatness(block: np.ndarray) -> np.ndarray:
    """Per-row fraction of pixels at the row's modal value (8-bit-like data: mode +-2)."""
    return _row_stats(block)[0]


def _normalised(block: np.ndarray) -> np.ndarray:
    b = block.astype(np.float32)
    lo, hi = float(b.min()), float(b.max())
    if hi <= lo:
        return np.zeros_like(b)
    return (b - lo) / (hi - lo)


def _bar_mode(flat: np.ndarray, mode: np.ndarray, tol: float, rows: slice) -> float | None:
    """The background value shared by most flat rows in ``rows``."""
    m = mode[rows][flat[rows]]
    if m.size == 0:
        return None
    counts = [(np.count_nonzero(np.abs(m - v) <= tol), -i, v) for i, v in enumerate(m)]
    return float(max(counts)[2])


def detect_info_bar(data: np.ndarray, vendor: str | None = None) -> dict | None:
    """Find a vendor data bar at the bottom of ``data`` (2-D).

    Returns ``{"y0": first bar row, "height": rows, "method": text, "confidence": 0..1}``
    or ``None`` when there is no bar.  See the module docstring for the method.
    """
    a = _as_2d(data)
    if a.ndim != 2:
        return None
    h, w = a.shape
    if h < 40 or w < 40:
        return None
    min_h = max(4, int(np.ceil(MIN_HEIGHT_FRACTION * h)))
    max_h = int(np.floor(MAX_HEIGHT_FRACTION * h))
    # longest streak of non-background (text) rows tolerated inside the bar
    max_gap = max(4, int(np.ceil(0.025 * h)))
    ctx = max_gap + 12  # micrograph rows kept above the tallest allowed bar, for the checks
    ys = max(0, h - max_h - ctx)
    block = a[ys:]
    if block.dtype.kind == "f" and not np.all(np.isfinite(block)):
        block = np.nan_to_num(block)
    n = len(block)
    flat_frac, mode, tol = _row_stats(block)
    flat = flat_frac >= FLAT_FRACTION
    vendor_hint = bool(vendor) and any(v in str(vendor).lower() for v in BAR_VENDORS)

    # --- 2. background run touching the bottom -------------------------------------
    M = _bar_mode(flat, mode, tol, slice(max(0, n - max(min_h, 8)), n))
    if M is None:
        return None
    # (computed only now: most images have no flat band at the bottom and return above)
    norm = _normalised(block)
    # median absolute change between consecutive rows: step[i] is between rows i-1 and i
    step = np.zeros(n, dtype=np.float32)
    step[1:] = np.median(np.abs(np.diff(norm, axis=0)), axis=1)
    bar = flat & (np.abs(mode - M) <= tol)  # background rows of the bar
    line = flat & ~bar  # rows of another flat value: frame and separator lines
    lowest = None
    top = None
    gap = 0
    reached_limit = True
    for i in range(n - 1, -1, -1):
        if bar[i]:
            top = i
            lowest = i if lowest is None else lowest
            gap = 0
        else:
            gap += 1
            if gap > max_gap:
                reached_limit = False
                break
    if top is None:
        return None
    bottom = n - 1
    y0_local = top
    # separator / frame lines just above the background rows belong to the bar
    # (at most 3 rows thick; a thicker run of one flat value is a flat image region)
    r = top - 1
    while r >= 1 and r >= top - 4:
        if line[r]:
            u = r
            while u - 1 >= 0 and line[u - 1] and abs(mode[u - 1] - mode[r]) <= tol and r - u < 3:
                u -= 1
            if r - u >= 3 or (u >= 1 and line[u - 1] and abs(mode[u - 1] - mode[r]) <= tol):
                break  # too thick for a separator line
            y0_local = u
            break  # one separator (1-3 rows of one value) at most
        elif flat[r]:
            break
        else:
            r -= 1  # a JPEG-blurred row between the background and the line
    # JPEG blurs the first bar row: move up to the sharpest step just above, if any
    for r in (y0_local - 1, y0_local - 2):
        if r >= 1 and flat_frac[r] >= 0.3 and step[r] >= 0.1 and step[r] > 1.5 * step[y0_local]:
            y0_local = r
            break
    height = h - (ys + y0_local)

    if not reached_limit:
        if not (min_h <= height <= max_h and y0_local >= 4) or lowest < n - 1 - max_gap:
            return None
        res = _check_bar(flat_frac, bar, line, step, y0_local, bottom)
        if res is None:
            return None
        conf, how = res
        if vendor_hint:
            conf = min(1.0, conf + 0.05)
        return {
            "y0": int(ys + y0_local),
            "height": int(height),
            "method": f"row statistics: flat band at the bottom, {how} at its top",
            "confidence": round(float(conf), 3),
        }

    # --- 4. separator-line fallback (background rows continue above the bar) ----------
    lo_i = max(1, n - max_h)
    hi_i = n - min_h
    for i in range(lo_i, hi_i + 1):  # topmost first
        if not (flat_frac[i] >= 0.97 and step[i] >= 0.3):
            continue
        below = slice(i + 1, n)
        if np.mean(bar[below] | line[below]) < 0.6:
            continue
        if not np.any(flat_frac[below] < 0.97):  # no text / logo / scale bar: not a data bar
            continue
        conf = 0.6 + (0.1 if vendor_hint else 0.0)
        return {
            "y0": int(ys + i),
            "height": int(h - ys - i),
            "method": "separator line above a flat band (no textured image rows above it)",
            "confidence": round(conf, 3),
        }
    return None


def _check_bar(flat_frac, bar, line, step, y0, bottom) -> tuple[float, str] | None:
    """Checks of step 3; returns (confidence, description) or None."""
    above = slice(max(0, y0 - 8), y0)
    if np.count_nonzero(bar[above]) > 1:
        return None
    band = bar[y0 : bottom + 1] | line[y0 : bottom + 1]
    band_flat = float(np.mean(band))
    if band_flat < 0.5:
        return None
    # the micrograph's own row-to-row change, for comparison with the edge
    ref = step[max(1, y0 - 10) : y0]
    typical = float(np.median(ref)) if ref.size else 0.0
    # a 1-2 px separator line may be followed by the band background: best step at the top
    s = max(float(step[y0]), float(step[y0 + 1]) if y0 + 1 < len(step) else 0.0)
    intensity_edge = s >= 0.10 and s >= 2.5 * typical + 0.02
    above_frac = float(np.mean(flat_frac[max(0, y0 - 4) : y0]))
    flatness_edge = flat_frac[y0] >= 0.9 and above_frac <= 0.3
    if not (intensity_edge or flatness_edge):
        return None
    conf = 0.45 + 0.25 * min(1.0, s / 0.3) + 0.2 * band_flat + 0.1 * (1.0 - min(1.0, above_frac / 0.3))
    how = "intensity step" if intensity_edge else "texture-to-flat step"
    return min(conf, 0.99), how


__all__ = ["detect_info_bar", "row_flatness"]
