"""Find the scale bar burned into a micrograph and (optionally) read its label.

Method (numpy only, on the bottom part of the image):

1. **Search regions** -- first the info bar (rows from ``valid_region.y1`` to the
   bottom) when one was detected; then (no info bar, or nothing found in it) the bottom
   20 % of the image above it (TEM/STEM exports put the bar in a bottom corner).  Each
   region is rescaled to 0..255.
2. **Foreground masks** -- the background is the region's most common grey level when
   the region is mostly flat (an info bar), else its median.  Pixels far brighter
   (or darker) than it form the bright (dark) mask; both polarities are tried, so white
   bars on black bars, black bars on white Zeiss boxes and white bars on TEM images are
   all found.  Inside a textured image region (no info bar) the thresholds are stricter.
3. **Horizontal runs** -- per mask row, runs of foreground pixels (vectorised); runs on
   consecutive rows with the same ends (+-1 px) are grouped into rectangles.
4. **Candidates** -- a rectangle is a bar candidate when it is thin (1 to ~15 px, more
   on very large images), long (width/height >= 5; >= 12 px and 1.5 % of the image
   width with end ticks, 2.5 % without), does not touch the left or
   right image edge (frame lines of the info box do), has straight ends, is uniform and
   is *isolated*: the rows just above and below it are background over its interior
   (this rejects text strokes and the filled parts of logos).
5. **End ticks** -- vertical strokes crossing the ends (FEI ``|---- 4 um ----|``,
   Zeiss ``|-----|``) are looked for in the mask columns at both ends.  Two collinear
   halves whose outer ends carry ticks and whose inner ends do not (FEI: the label sits
   in the gap) are merged into one bar.
6. **Choice** -- the longest candidate wins (ticked bars count 1.5x, less isolated ones
   less), which also avoids text strokes.

Length convention (checked against the calibration in the files): for a bar whose ends
are marked by thin tick lines (<= 2 px wide), ``length_px`` is the distance between the
tick centres (Zeiss: 76 px for 200 um at 2.615 um/px; FEI Helios: 148 px for 500 um at
3.372 um/px; FEI Teneo: 517 px for 4 um at 7.708 nm/px, 0.4 % short); for wide end caps
(TVIPS: 141 px for 200 nm at 1.421 nm/px) and solid bars it is the full extent
``x1 - x0``.  ``extent_px`` always holds the full extent.  The bounding box ``x0, x1,
y0, y1`` is half-open (like :class:`~napari_nanodefect.core.micrograph.Region`): columns
``x0 .. x1-1``.

OCR of the label ("500 nm", "2 µm", ...) is only tried when the ``tesseract`` program
and the ``pytesseract`` module are both present; otherwise ``"ocr": "unavailable"`` and
the user types the value (see :func:`pixel_size_from_scale_bar`).
"""

from __future__ import annotations

import re
import shutil
from typing import Any

import numpy as np

from .micrograph import unit_to_nm

#: fraction of the image height searched when there is no info bar
NO_BAR_SEARCH_FRACTION = 0.20

_UNIT_ALIASES = {
    "nm": "nm",
    "nanometer": "nm",
    "nanometers": "nm",
    "nanometre": "nm",
    "nanometres": "nm",
    "um": "µm",
    "µm": "µm",
    "μm": "µm",
    "micron": "µm",
    "microns": "µm",
    "micrometer": "µm",
    "micrometers": "µm",
    "micrometre": "µm",
    "micrometres": "µm",
    "mm": "mm",
    "cm": "cm",
    "m": "m",
    "pm": "pm",
    "å": "Å",
    "Å": "Å",
    "a": "Å",
    "angstrom": "Å",
    "angstroms": "Å",
    "ang": "Å",
}

_LABEL_RE = re.compile(
    r"(?<![\w.,])(\d+(?:[.,]\d+)?)\s*"
    r"(nanomet(?:er|re)s?|micromet(?:er|re)s?|microns?|angstroms?|"
    r"[uµμ]m|nm|mm|cm|pm|[ÅÅ]|A|m)"
    r"(?![A-Za-z])",
    re.IGNORECASE,
)


def parse_scale_label(text: str | None) -> tuple[float, str] | None:
    """Parse a scale-bar label: ``"500 nm"`` -> ``(500.0, "nm")``, ``"2 µm"``/``"1um"`` -> µm.

    Units are normalised to ``nm``, ``µm``, ``mm``, ``cm``, ``m``, ``pm`` or ``Å``;
    a decimal comma is accepted.  Returns ``None`` when no ``<number> <unit>`` is found
    or the value is not positive.
    """
    if not text:
        return None
    t = str(text).replace("\u00c5", "Å").replace("\u212b", "Å").replace("\u03bc", "µ")
    for m in _LABEL_RE.finditer(t):
        num, unit = m.group(1), m.group(2)
        key = unit if unit in ("Å", "A") else unit.lower()
        if key == "A":
            key = "a"
        norm = _UNIT_ALIASES.get(key)
        if norm is None:
            continue
        try:
            value = float(num.replace(",", "."))
        except ValueError:
            continue
        if not np.isfinite(value) or value <= 0:
            continue
        return value, norm
    return None


def pixel_size_from_scale_bar(length_px: float, value: float, unit: str) -> float:
    """Pixel size in nm from a scale bar ``length_px`` long that stands for ``value unit``."""
    factor = unit_to_nm(unit)
    if factor is None:
        raise ValueError(f"unknown length unit {unit!r}")
    length_px = float(length_px)
    value = float(value)
    if not np.isfinite(length_px) or length_px <= 0:
        raise ValueError(f"scale bar length must be a positive number of pixels, got {length_px!r}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"scale bar value must be positive, got {value!r}")
    return value * factor / length_px


def ocr_available() -> bool:
    """True when both the ``tesseract`` program and the ``pytesseract`` module are present."""
    if shutil.which("tesseract") is None:
        return False
    try:
        import pytesseract  # noqa: F401
    except Exception:
        return False
    return True


# ----------------------------------------------------------------------------- helpers


def _as_2d(data: np.ndarray) -> np.ndarray:
    a = np.asarray(data)
    while a.ndim > 2:
        a = a[..., 0] if a.shape[-1] in (3, 4) else a[0]
    return a


def _search_regions(h: int, valid_region: Any) -> list[tuple[int, int, bool, str]]:
    """(first row, end row, strict, description) of the regions to search, in order."""
    y1 = None
    if valid_region is not None:
        y1 = valid_region.get("y1") if isinstance(valid_region, dict) else getattr(valid_region, "y1", None)
    out = []
    if y1 is not None and 0 < int(y1) < h - 2:
        y1 = int(y1)
        out.append((y1, h, False, "info bar"))
    else:
        y1 = h
    frac = int(NO_BAR_SEARCH_FRACTION * 100)
    out.append((max(0, y1 - int(np.ceil(NO_BAR_SEARCH_FRACTION * h))), y1, True, f"bottom {frac} % of the image"))
    return out


def _to_levels(block: np.ndarray) -> np.ndarray:
    """Rescale to 0..255 float32 (min -> 0, max -> 255)."""
    b = block.astype(np.float32)
    lo, hi = float(b.min()), float(b.max())
    if hi <= lo:
        return np.zeros_like(b)
    return (b - lo) * (255.0 / (hi - lo))


def _runs(mask: np.ndarray, min_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of True: (row, x0, x1) with x1 exclusive, length >= min_len."""
    # only rows with enough foreground can hold a long run: skip the rest (big images)
    rows = np.flatnonzero(np.count_nonzero(mask, axis=1) >= min_len)
    if rows.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    m = mask[rows].astype(np.int8)
    d = np.diff(m, axis=1, prepend=0, append=0)
    sr, sc = np.nonzero(d == 1)
    er, ec = np.nonzero(d == -1)
    keep = (ec - sc) >= min_len
    return rows[sr[keep]], sc[keep], ec[keep]


def _group_runs(rows, x0s, x1s) -> list[dict]:
    """Group runs on consecutive rows with the same ends (+-1 px) into rectangles."""
    groups: list[dict] = []
    active: dict[tuple[int, int], int] = {}
    prev_row = None
    order = np.lexsort((x0s, rows))
    new_active: dict[tuple[int, int], int] = {}
    used: set[int] = set()
    for k in order:
        r, a, b = int(rows[k]), int(x0s[k]), int(x1s[k])
        if r != prev_row:
            if prev_row is not None and r == prev_row + 1:
                active = new_active
            else:
                active = {}
            new_active = {}
            used = set()
            prev_row = r
        gi = None
        for da in (0, -1, 1):
            for db in (0, -1, 1):
                g = active.get((a + da, b + db))
                if g is not None and g not in used:
                    gi = g
                    break
            if gi is not None:
                break
        if gi is not None:
            used.add(gi)
            g = groups[gi]
            g["y1"] = r + 1
            g["x0min"], g["x0max"] = min(g["x0min"], a), max(g["x0max"], a)
            g["x1min"], g["x1max"] = min(g["x1min"], b), max(g["x1max"], b)
        else:
            gi = len(groups)
            groups.append({"y0": r, "y1": r + 1, "x0min": a, "x0max": a, "x1min": b, "x1max": b})
        new_active[(a, b)] = gi
    return groups


def _extents(mask: np.ndarray, col: int, y0: int, y1: int, limit: int) -> tuple[int, int]:
    """Foreground pixels in column ``col`` directly above row y0 and directly below row y1-1."""
    c = mask[max(0, y0 - limit) : y0, col][::-1]
    up = int(np.argmin(c)) if c.size and not c.all() else int(c.size)
    c = mask[y1 : y1 + limit, col]
    down = int(np.argmin(c)) if c.size and not c.all() else int(c.size)
    return up, down


def _tick(mask: np.ndarray, cols: range, y0: int, y1: int, t: int) -> tuple[float, int] | None:
    """(centre column, width) of a vertical tick crossing the bar end within ``cols``, or None.

    A tick sticks out of the bar by >= max(3, t+1) px in total, or by at least 1 px on
    both sides (the small end serifs of FEI Helios bars).
    """
    need = max(3, t + 1)
    limit = max(4 * t, 40)
    hits = []
    for c in cols:
        if 0 <= c < mask.shape[1]:
            up, down = _extents(mask, c, y0, y1, limit)
            if up + down >= need or (up >= 1 and down >= 1):
                hits.append(c)
    if not hits:
        return None
    if len(hits) > max(4, 2 * t + 1):  # too wide for a tick: a block, not a line end
        return None
    return float(np.mean(hits)), len(hits)


def _candidates(q: np.ndarray, mask: np.ndarray, strict: bool, h_img: int, w_img: int, polarity: str) -> list[dict]:
    n, w = mask.shape
    max_t = max(15, int(round(0.03 * h_img)))
    rows, x0s, x1s = _runs(mask, 8)
    if rows.size == 0:
        return []
    if rows.size > 20000:  # hopelessly textured: keep only the longer runs
        keep = (x1s - x0s) >= 12
        rows, x0s, x1s = rows[keep], x0s[keep], x1s[keep]
    out = []
    for g in _group_runs(rows, x0s, x1s):
        y0, y1 = g["y0"], g["y1"]
        x0, x1 = g["x0min"], g["x1max"]
        t, L = y1 - y0, x1 - x0
        if L < 8 or t > max_t or L < 5 * t:
            continue
        if x0 <= 0 or x1 >= w or L > 0.8 * w_img:
            continue
        if g["x0max"] - g["x0min"] > 2 or g["x1max"] - g["x1min"] > 2:
            continue
        # isolation: interior of the rows just above and below is background
        i0, i1 = x0 + t + 2, x1 - t - 2
        if i1 - i0 < 3:
            i0, i1 = x0 + 1, x1 - 1
        fa = float(mask[y0 - 1, i0:i1].mean()) if y0 >= 1 and i1 > i0 else 0.0
        fb = float(mask[y1, i0:i1].mean()) if y1 < n and i1 > i0 else 0.0
        iso = 1.0 - max(fa, fb)
        if iso < (0.8 if strict else 0.6):
            continue
        # uniform inside
        inner = q[y0:y1, x0:x1]
        if float(inner.std()) > (12.0 if not strict else 8.0):
            continue
        k = max(3, t + 1)
        left = _tick(mask, range(x0, x0 + k), y0, y1, t)
        right = _tick(mask, range(x1 - k, x1), y0, y1, t)
        has_ticks = left is not None and right is not None
        # solid bars are long; short ticked bars are kept (Zeiss 512-px images: 17 px)
        if L < (max(12, 0.015 * w_img) if has_ticks else max(12, 0.025 * w_img)):
            continue
        if strict:
            # inside a textured image: only clean, well separated bars
            if not has_ticks and t < 2:
                continue
            if L < max(20, 0.03 * w_img):
                continue
        out.append(
            {"y0": y0, "y1": y1, "x0": x0, "x1": x1, "t": t, "L": L, "iso": iso, "left": left, "right": right,
             "polarity": polarity}
        )
    return out


def _merge_split(cands: list[dict]) -> list[dict]:
    """FEI style ``|---- label ----|``: join two halves with outer ticks only."""
    merged = []
    for a in cands:
        if a["left"] is None or a["right"] is not None:
            continue
        for b in cands:
            if b is a or b["right"] is None or b["left"] is not None or b["polarity"] != a["polarity"]:
                continue
            if abs(a["y0"] - b["y0"]) > 1 or abs(a["y1"] - b["y1"]) > 1:
                continue
            gap = b["x0"] - a["x1"]
            if gap <= 0 or gap > 0.5 * (a["L"] + b["L"]):
                continue
            if max(a["L"], b["L"]) > 1.5 * min(a["L"], b["L"]):
                continue
            merged.append(
                {"y0": min(a["y0"], b["y0"]), "y1": max(a["y1"], b["y1"]), "x0": a["x0"], "x1": b["x1"],
                 "t": max(a["t"], b["t"]), "L": b["x1"] - a["x0"], "iso": min(a["iso"], b["iso"]),
                 "left": a["left"], "right": b["right"], "polarity": a["polarity"], "split": True}
            )
    return merged


def _score(c: dict) -> float:
    ticks = c["left"] is not None and c["right"] is not None
    return c["L"] * (1.5 if ticks else 1.0) * (0.5 + 0.5 * c["iso"])


# ------------------------------------------------------------------------------- OCR


def _ocr_label(a: np.ndarray, ry0: int, bar: dict) -> tuple[str | None, tuple[float, str] | None, str]:
    """Read the text near the bar with tesseract; returns (text, parsed, status)."""
    try:
        import pytesseract
        from PIL import Image
    except Exception:
        return None, None, "unavailable"
    h, w = a.shape
    L = bar["x1"] - bar["x0"]
    y0 = max(ry0, bar["y0"] - max(40, int(0.5 * L)))
    y1 = min(h, bar["y1"] + max(40, int(0.5 * L)))
    x0 = max(0, bar["x0"] - L)
    x1 = min(w, bar["x1"] + L)
    crop = _to_levels(a[y0:y1, x0:x1])
    if float(np.median(crop)) < 128:  # tesseract prefers dark text on a light background
        crop = 255.0 - crop
    img = Image.fromarray(crop.astype(np.uint8))
    scale = 3 if img.height < 100 else 2 if img.height < 200 else 1
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.LANCZOS)
    try:
        d = pytesseract.image_to_data(img, config="--psm 11", output_type=pytesseract.Output.DICT)
    except Exception:
        return None, None, "failed"
    # words with their centres (crop pixels); join neighbours on the same line ("200" "µm")
    words = []
    for txt, left, top, ww, hh in zip(d.get("text", []), d.get("left", []), d.get("top", []), d.get("width", []),
                                      d.get("height", [])):
        txt = (txt or "").strip()
        if txt:
            words.append((txt, (left + ww / 2) / scale + x0, (top + hh / 2) / scale + y0, hh / scale))
    bx, by = (bar["x0"] + bar["x1"]) / 2, (bar["y0"] + bar["y1"]) / 2
    best = None
    for i, (txt, cx, cy, hh) in enumerate(words):
        texts = [txt]
        if i + 1 < len(words) and abs(words[i + 1][2] - cy) < max(hh, 4):
            texts.append(txt + " " + words[i + 1][0])
        for s in texts:
            p = parse_scale_label(s)
            if p is not None:
                dist = float(np.hypot(cx - bx, cy - by))
                if best is None or dist < best[0]:
                    best = (dist, s, p)
    if best is None:
        text = " ".join(w_[0] for w_ in words) or None
        return text, None, "failed"
    return best[1], best[2], "tesseract"


def _search(block: np.ndarray, strict: bool, h: int, w: int) -> dict | None:
    """Best bar candidate in ``block`` (rows of the image), in block coordinates."""
    if block.dtype.kind == "f" and not np.all(np.isfinite(block)):
        block = np.nan_to_num(block)
    q = _to_levels(block)
    if not np.any(q):
        return None
    qi = np.clip(np.rint(q), 0, 255).astype(np.uint8)
    hist = np.bincount(qi.ravel(), minlength=256)
    mode = int(hist.argmax())
    flat_region = hist[max(0, mode - 1) : mode + 2].sum() >= 0.3 * qi.size
    # the median of a regular subsample is as good a background level and much cheaper
    step = max(1, int(np.sqrt(q.size / 250_000)))
    bg = float(mode) if flat_region else float(np.median(q[::step, ::step]))
    # inside the micrograph itself (strict) a bar must be clean and well separated
    cands: list[dict] = []
    for polarity in ("bright", "dark"):
        span = 255.0 - bg if polarity == "bright" else bg
        if span < 64:
            continue
        k = 0.8 if strict else 0.5
        mask = q >= bg + k * span if polarity == "bright" else q <= bg - k * span
        cands.extend(_candidates(q, mask, strict, h, w, polarity))
    cands.extend(_merge_split(cands))
    if not cands:
        return None
    return max(cands, key=_score)


# ----------------------------------------------------------------------------- public


def detect_scale_bar(data: np.ndarray, valid_region=None, ocr: bool | None = None) -> dict | None:
    """Find the scale bar in ``data`` (2-D) -- see the module docstring for the method.

    Parameters
    ----------
    data : the analysed plane.
    valid_region : the image area without the info bar (a ``Region`` or a dict with
        ``y1``); when it ends above the last row the info bar below it is searched,
        otherwise the bottom 20 % of the image.
    ocr : read the label with tesseract: ``None`` = when available, ``False`` = never,
        ``True`` = try (reports ``"unavailable"`` when it is not installed).

    Returns
    -------
    ``None`` when no bar is found, else a dict with ``length_px``, ``extent_px``,
    ``thickness_px``, ``x0``, ``x1``, ``y0``, ``y1`` (half-open bbox), ``style``
    (``"ticks"``, ``"split ticks"``, ``"end caps"``, ``"split end caps"``, ``"solid"``),
    ``polarity``, ``label``, ``value``,
    ``unit``, ``pixel_size_nm`` and ``ocr`` (``"tesseract"``, ``"unavailable"``,
    ``"failed"`` or ``"off"``).
    """
    a = _as_2d(data)
    if a.ndim != 2 or min(a.shape) < 16:
        return None
    h, w = a.shape
    best = None
    for ry0, ry1, strict, where in _search_regions(h, valid_region):
        if ry1 - ry0 < 3:
            continue
        best = _search(a[ry0:ry1], strict, h, w)
        if best is not None:
            break
    if best is None:
        return None
    ticks = best["left"] is not None and best["right"] is not None
    if ticks and max(best["left"][1], best["right"][1]) <= 2:
        # thin tick lines mark the ends: measure between their centres (Zeiss, FEI Helios)
        length = float(best["right"][0] - best["left"][0])
        style = "split ticks" if best.get("split") else "ticks"
    elif ticks:
        # wide end caps (TVIPS, ...): the bar is the full extent
        length = float(best["L"])
        style = "split end caps" if best.get("split") else "end caps"
    else:
        length = float(best["L"])
        style = "solid"
    res: dict[str, Any] = {
        "length_px": length,
        "extent_px": float(best["L"]),
        "thickness_px": int(best["t"]),
        "x0": int(best["x0"]),
        "x1": int(best["x1"]),
        "y0": int(best["y0"] + ry0),
        "y1": int(best["y1"] + ry0),
        "style": style,
        "polarity": best["polarity"],
        "search": where,
        "label": None,
        "value": None,
        "unit": None,
        "pixel_size_nm": None,
        "ocr": "unavailable",
    }
    if ocr is False:
        res["ocr"] = "off"
        return res
    if not ocr_available():
        return res
    bar_abs = {"x0": res["x0"], "x1": res["x1"], "y0": res["y0"], "y1": res["y1"]}
    try:
        text, parsed, status = _ocr_label(a, ry0, bar_abs)
    except Exception:
        text, parsed, status = None, None, "failed"
    res["ocr"] = status
    res["label"] = text
    if parsed is not None:
        value, unit = parsed
        res["value"], res["unit"] = value, unit
        try:
            res["pixel_size_nm"] = pixel_size_from_scale_bar(length, value, unit)
        except ValueError:
            res["pixel_size_nm"] = None
    return res


__all__ = ["detect_scale_bar", "parse_scale_label", "pixel_size_from_scale_bar", "ocr_available"]
