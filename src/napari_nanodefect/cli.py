"""The ``nanodefect`` command: every headless job of napari-nanodefect.

Sub-commands (``nanodefect COMMAND --help`` for each):

- ``info FILE... [--json]``: pixel size and where it came from, vendor, analysed plane,
  info bar (valid region) and scale bar.
- ``convert IN --to coco|labelme|labels --out OUT``: LabelMe <-> COCO <-> label TIFFs.
- ``demo [--out DIR]``: runs the pipeline on a built-in synthetic micrograph.

Errors in the user's input print one line ``nanodefect: error: FILE: problem`` and exit
with status 2; nothing is half-written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from . import __version__
from .core.errors import NanodefectError


def _fmt_info(info: dict) -> str:
    ps = info["pixel_size_nm"]
    lines = [
        f"file:          {info['path']}",
        f"shape, dtype:  {tuple(info['shape'])} {info['dtype']}  ({info['plane_rule']})",
        f"vendor:        {info['vendor'] or 'unknown'}",
        f"pixel size:    {'unknown (type it in: --pixel-size NM)' if ps is None else f'{ps:.6g} nm'}"
        + (f"  from {info['pixel_size_source']}" if info["pixel_size_source"] else ""),
    ]
    vr = info["valid_region"]
    bar = info.get("info_bar")
    lines.append(
        f"valid region:  rows {vr['y0']}:{vr['y1']}, cols {vr['x0']}:{vr['x1']}"
        + (f"  (info bar of {bar['height']} rows: {bar['method']})" if bar else "  (no info bar)")
    )
    sb = info.get("scale_bar")
    if sb:
        label = f"{sb['value']:g} {sb['unit']}" if sb.get("value") else f"label not read (OCR {sb.get('ocr')}); type the number"
        lines.append(f"scale bar:     {sb['length_px']:.1f} px at row {sb['y0']}, {label}")
    else:
        lines.append("scale bar:     none found")
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    from .core.io import read_image

    infos = []
    for f in args.files:
        m = read_image(f, plane=args.plane, pixel_size_nm=args.pixel_size)
        infos.append(m.info())
    if args.json:
        out = infos[0] if len(infos) == 1 else infos
        if not args.metadata:
            for i in infos:
                i.pop("metadata", None)
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print("\n\n".join(_fmt_info(i) for i in infos))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .core.annotations.convert import convert

    written = convert(args.input, args.to, args.out, images=args.images)
    for p in written:
        print(p)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nanodefect",
        description="Count, measure and map nanoparticles and defects in micrographs (headless side of napari-nanodefect).",
    )
    p.add_argument("--version", action="version", version=f"napari-nanodefect {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("info", help="pixel size, vendor, info bar and scale bar of image files")
    s.add_argument("files", nargs="+", metavar="FILE")
    s.add_argument("--json", action="store_true", help="print JSON (one object, or a list for several files)")
    s.add_argument("--metadata", action="store_true", help="include the vendor metadata in the JSON")
    s.add_argument("--plane", type=int, default=0, help="page/frame of a multi-page file (default 0)")
    s.add_argument("--pixel-size", type=float, default=None, metavar="NM", help="override the pixel size (nm)")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("convert", help="convert annotations: LabelMe <-> COCO <-> label TIFFs")
    s.add_argument("input", metavar="IN", help="LabelMe JSON file or folder, COCO JSON, or label TIFF(s)")
    s.add_argument("--to", required=True, choices=["coco", "labelme", "labels"])
    s.add_argument("--out", required=True, help="output file (coco) or folder (labelme, labels)")
    s.add_argument("--images", default=None, metavar="DIR", help="folder with the images COCO refers to")
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("demo", help="run the pipeline on a built-in synthetic micrograph")
    s.add_argument("--out", default="nanodefect-demo", help="output folder (default ./nanodefect-demo)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NanodefectError as exc:
        print(f"nanodefect: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nanodefect: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
