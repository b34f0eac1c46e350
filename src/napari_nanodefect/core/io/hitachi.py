"""Hitachi SU-series SEM sidecar files.

Hitachi SEMs save ``image.tif`` (or .bmp/.jpg) with ``image.txt`` beside it: an INI-like
text with lines ``Key=Value``, among them ``PixelSize=`` (nm per pixel), ``DataSize=WxH``
(the image area, without the data bar) and ``InstructName=`` (the microscope).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def parse_hitachi_text(text: str) -> dict[str, str] | None:
    """Parse the sidecar text into a dict, or None when it is not a Hitachi sidecar."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            fields[key.strip()] = value.strip()
    if "PixelSize" not in fields or not ({"ImageName", "InstructName", "DataSize", "SemInfo"} & set(fields) or len(fields) > 5):
        return None
    return fields


def find_sidecar(image_path: Path) -> Path | None:
    for cand in (image_path.with_suffix(".txt"), image_path.with_suffix(".TXT")):
        if cand.exists() and cand != image_path:
            return cand
    return None


def read_hitachi_sidecar(image_path: str | Path, shape: tuple[int, int]) -> dict[str, Any] | None:
    """Pixel size (and data-bar position) from a Hitachi ``.txt`` sidecar, if there is one."""
    side = find_sidecar(Path(image_path))
    if side is None or side.stat().st_size > 1_000_000:
        return None
    fields = parse_hitachi_text(side.read_text(encoding="utf-8", errors="replace"))
    if fields is None:
        return None
    try:
        px = float(re.findall(r"[-+0-9.eE]+", fields["PixelSize"])[0])
    except (IndexError, ValueError):
        return None
    if not px > 0:
        return None
    out: dict[str, Any] = {
        "vendor": f"Hitachi {fields.get('InstructName', '')}".strip(),
        "pixel_size_nm": px,
        "source": f"Hitachi sidecar {side.name} PixelSize=",
        "metadata": {"hitachi": fields},
    }
    m = re.match(r"\s*(\d+)\s*[xX*]\s*(\d+)", fields.get("DataSize", ""))
    if m:
        h = int(m.group(2))
        if 0 < h < shape[0]:
            out["info_bar"] = {"y0": h, "height": shape[0] - h, "method": "Hitachi sidecar DataSize", "confidence": 1.0}
    return out
