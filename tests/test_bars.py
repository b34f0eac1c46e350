"""Info bar and scale bar detection (core.infobar / core.scalebar).

Synthetic cases need no data; real cases use ../shared/data/real and skip without it.
Truths for the real files come from their vendor metadata (FEI [Image] ResolutionY,
Zeiss CZ_SEM pixel size, TVIPS resolution tags) or, where stated, from looking at them.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import real_file
from scipy import ndimage as ndi

from napari_nanodefect.core.infobar import detect_info_bar, row_flatness
from napari_nanodefect.core.micrograph import Region
from napari_nanodefect.core.scalebar import (
    detect_scale_bar,
    ocr_available,
    parse_scale_label,
    pixel_size_from_scale_bar,
)

# --------------------------------------------------------------------------- synthetic


def texture(h=600, w=800, seed=0):
    """A noisy, blobby SEM-like texture in 40..210 (uint8)."""
    rng = np.random.default_rng(seed)
    base = ndi.gaussian_filter(rng.normal(size=(h, w)), 6)
    base = (base - base.min()) / (base.max() - base.min())
    img = 40 + 170 * base + rng.normal(0, 8, size=(h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def glyphs(img, y, x, n, fg, rng, size=(12, 8)):
    """Text-like blobs: n letter-sized boxes with holes, 2 px strokes."""
    gh, gw = size
    bg = img[y - 1, x - 1]
    for i in range(n):
        x0 = x + i * (gw + 4)
        kind = rng.integers(0, 3)
        if kind == 0:  # "0"
            img[y : y + gh, x0 : x0 + gw] = fg
            img[y + 2 : y + gh - 2, x0 + 2 : x0 + gw - 2] = bg
        elif kind == 1:  # "1"
            img[y : y + gh, x0 + 3 : x0 + 5] = fg
        else:  # "L"
            img[y : y + gh, x0 : x0 + 2] = fg
            img[y + gh - 2 : y + gh, x0 : x0 + gw - 2] = fg


def sem_with_bar(
    h=600,
    w=800,
    bar_h=64,
    bar_len=237,
    style="solid",
    bar_bg=25,
    fg=255,
    separator=True,
    seed=1,
):
    """Texture + bottom data bar of ``bar_h`` rows with a scale bar of ``bar_len`` px."""
    rng = np.random.default_rng(seed)
    img = texture(h, w, seed)
    y0 = h - bar_h
    img[y0:] = bar_bg
    if separator:
        img[y0 : y0 + 2] = 128
    x0, yb = 40, y0 + 36
    if style == "solid":  # TEM-style filled bar, 6 px thick
        img[yb : yb + 6, x0 : x0 + bar_len] = fg
    elif style == "ticks":  # Zeiss-style: 2 px line, 1 px ticks whose centres are bar_len apart
        img[yb : yb + 2, x0 : x0 + bar_len + 1] = fg
        img[yb - 8 : yb + 10, x0] = fg
        img[yb - 8 : yb + 10, x0 + bar_len] = fg
    elif style == "split":  # FEI-style |---- label ----|, label in the gap
        half = (bar_len - 60) // 2
        img[yb : yb + 2, x0 : x0 + half] = fg
        img[yb : yb + 2, x0 + bar_len + 1 - half : x0 + bar_len + 1] = fg
        img[yb - 8 : yb + 10, x0] = fg
        img[yb - 8 : yb + 10, x0 + bar_len] = fg
        glyphs(img, yb - 5, x0 + half + 8, 3, fg, rng)
    if style in ("solid", "ticks"):
        glyphs(img, y0 + 14, x0 + 40, 5, fg, rng)  # the label above the bar
    glyphs(img, y0 + 12, 380, 14, fg, rng)  # more text: "EHT = 5.00 kV" ...
    glyphs(img, y0 + 36, 380, 10, fg, rng)
    return img, y0


def test_synthetic_info_bar_and_solid_scale_bar():
    img, y0 = sem_with_bar()
    bar = detect_info_bar(img)
    assert bar is not None
    assert bar["y0"] == y0 and bar["height"] == img.shape[0] - y0
    assert 0.5 < bar["confidence"] <= 1.0 and isinstance(bar["method"], str)
    sb = detect_scale_bar(img, valid_region=Region(0, 0, bar["y0"], img.shape[1]))
    assert sb is not None
    assert sb["length_px"] == 237.0 and sb["extent_px"] == 237.0
    assert (sb["x0"], sb["x1"], sb["y0"], sb["y1"]) == (40, 277, y0 + 36, y0 + 42)
    assert sb["style"] == "solid"


@pytest.mark.parametrize("style", ["ticks", "split"])
def test_synthetic_ticked_scale_bars(style):
    img, y0 = sem_with_bar(style=style)
    bar = detect_info_bar(img)
    assert bar is not None and bar["y0"] == y0
    sb = detect_scale_bar(img, valid_region=Region(0, 0, y0, img.shape[1]))
    assert sb is not None
    assert sb["length_px"] == 237.0  # between the tick centres
    assert sb["extent_px"] == 238.0
    assert sb["x0"] == 40 and sb["x1"] == 278
    assert sb["style"] == ("ticks" if style == "ticks" else "split ticks")


def test_synthetic_white_bar_dark_text_no_separator():
    """Zeiss-like white box with black text and bar, no separator line."""
    img, y0 = sem_with_bar(bar_bg=245, fg=0, separator=False, style="ticks", bar_h=50, bar_len=120)
    bar = detect_info_bar(img, vendor="Zeiss")
    assert bar is not None and bar["y0"] == y0 and bar["height"] == 50
    sb = detect_scale_bar(img, valid_region=Region(0, 0, y0, img.shape[1]))
    assert sb is not None and sb["length_px"] == 120.0 and sb["polarity"] == "dark"


@pytest.mark.parametrize("kind", ["uint16", "int32", "float32", "float01"])
def test_synthetic_dtypes(kind):
    img8, y0 = sem_with_bar()
    if kind == "uint16":
        img = img8.astype(np.uint16) * 257
    elif kind == "int32":
        img = img8.astype(np.int32) * 1000 - 50000
    elif kind == "float32":
        img = img8.astype(np.float32) * 3.7 + 0.25
    else:
        img = img8.astype(np.float32) / 255.0
    bar = detect_info_bar(img)
    assert bar is not None and bar["y0"] == y0
    sb = detect_scale_bar(img, valid_region=Region(0, 0, y0, img.shape[1]))
    assert sb is not None and sb["length_px"] == 237.0


def test_rgb_input_uses_first_channel():
    img, y0 = sem_with_bar()
    rgb = np.stack([img, img, img], axis=-1)
    assert detect_info_bar(rgb)["y0"] == y0
    assert detect_scale_bar(rgb, valid_region={"y1": y0})["length_px"] == 237.0


def test_scale_bar_without_valid_region_searches_bottom():
    img, y0 = sem_with_bar()
    sb = detect_scale_bar(img)  # no valid_region: bottom 20 % of the image
    assert sb is not None and sb["length_px"] == 237.0
    full = Region(0, 0, img.shape[0], img.shape[1])  # a valid region with no info bar
    assert detect_scale_bar(img, valid_region=full)["length_px"] == 237.0


def test_tem_corner_bar_without_info_bar():
    """A white TEM scale bar drawn on the image, bottom-left, no data bar."""
    img = texture(512, 512, seed=3)
    img[470:478, 30:158] = 255
    assert detect_info_bar(img) is None
    sb = detect_scale_bar(img)
    assert sb is not None and sb["length_px"] == 128.0 and (sb["y0"], sb["y1"]) == (470, 478)


def _jpeg(a, quality=85):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=quality)
    return np.array(Image.open(buf))


@pytest.mark.parametrize("style", ["solid", "ticks", "split"])
def test_synthetic_jpeg_q85(style):
    img, y0 = sem_with_bar(style=style)
    j = _jpeg(img)
    bar = detect_info_bar(j)
    assert bar is not None and bar["y0"] == y0
    sb = detect_scale_bar(j, valid_region={"y1": bar["y0"]})
    assert sb is not None and sb["length_px"] == 237.0


def test_scale_bar_falls_back_above_an_info_bar_without_one():
    img = texture(600, 800, seed=4)
    img[560:] = 20  # data bar with text only
    glyphs(img, 575, 300, 10, 255, np.random.default_rng(0))
    img[520:528, 600:760] = 255  # TEM-style bar in the image, just above the data bar
    bar = detect_info_bar(img)
    assert bar is not None and bar["y0"] == 560
    sb = detect_scale_bar(img, valid_region=Region(0, 0, 560, 800))
    assert sb is not None and sb["length_px"] == 160.0 and sb["search"].startswith("bottom")


@pytest.mark.parametrize(
    "transform",
    [np.flipud, np.rot90, lambda a: np.rot90(a, 3), np.transpose],
    ids=["bar-at-top", "rot90", "rot270", "transposed"],
)
def test_bar_elsewhere_is_not_an_info_bar(transform):
    img, _ = sem_with_bar()
    out = np.ascontiguousarray(transform(img))
    assert detect_info_bar(out) is None
    if transform is not np.flipud:
        assert detect_scale_bar(out) is None  # a vertical bar is not a scale bar


def test_negatives_synthetic():
    h, w = 600, 800
    assert detect_info_bar(np.full((h, w), 77, np.uint8)) is None
    assert detect_scale_bar(np.full((h, w), 77, np.uint8)) is None
    assert detect_info_bar(np.zeros((h, w), np.float32)) is None
    tex = texture(h, w, seed=5)
    assert detect_info_bar(tex) is None
    assert detect_scale_bar(tex) is None
    # vertical gradient + noise
    rng = np.random.default_rng(0)
    grad = np.linspace(0, 255, h)[:, None] + rng.normal(0, 6, (h, w))
    assert detect_info_bar(np.clip(grad, 0, 255).astype(np.uint8)) is None
    # particles on a perfectly flat background (synthetic test images), with and without noise
    yy, xx = np.mgrid[:h, :w]
    parts = np.full((h, w), 50, np.uint8)
    for cy, cx, r in rng.uniform((0, 0, 5), (h, w, 25), size=(60, 3)):
        parts[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 200
    assert detect_info_bar(parts) is None
    noisy = np.clip(parts + rng.normal(0, 10, (h, w)), 0, 255).astype(np.uint8)
    assert detect_info_bar(noisy) is None
    assert detect_scale_bar(noisy) is None
    # saturated dark vacuum at the bottom with a wavy edge (STEM-like)
    stem = texture(h, w, seed=7)
    edge = (h - 60 + 15 * np.sin(np.arange(w) / 40.0)).astype(int)
    stem[yy >= edge[None, :]] = 0
    assert detect_info_bar(stem) is None
    # tiny images
    assert detect_info_bar(np.zeros((10, 10), np.uint8)) is None
    assert detect_scale_bar(np.zeros((10, 10), np.uint8)) is None


def test_bar_height_limits():
    img, y0 = sem_with_bar(bar_h=240)  # 40 % of the height: not a data bar
    assert detect_info_bar(img) is None
    img = texture(600, 800)
    img[592:] = 20  # 8 rows = 1.3 % of the height: too thin for a data bar
    img[595:597, 100:120] = 255
    assert detect_info_bar(img) is None


def test_row_flatness():
    a = np.zeros((3, 10), np.uint8)
    a[1] = np.arange(10) * 20
    a[2, :7] = 100
    a[2, 7:] = 101  # within +-1 grey level
    f = row_flatness(a)
    assert f[0] == 1.0 and f[1] == pytest.approx(0.1) and f[2] == 1.0
    b = a.astype(np.uint16) * 300  # exact equality path
    fb = row_flatness(b)
    assert fb[0] == 1.0 and fb[2] == pytest.approx(0.7)


def test_speed_2048x1536():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (1536, 2048), dtype=np.uint8)
    img[1400:] = 0
    img[1420:1428, 100:500] = 255
    detect_info_bar(img)
    t = time.perf_counter()
    bar = detect_info_bar(img)
    sb = detect_scale_bar(img, valid_region={"y1": bar["y0"]})
    dt = time.perf_counter() - t
    assert bar["y0"] == 1400 and sb["length_px"] == 400.0
    assert dt < 0.3  # ~30 ms here; generous for slow CI machines


# ----------------------------------------------------------------------- labels & OCR


@pytest.mark.parametrize(
    "text, expected",
    [
        ("500 nm", (500.0, "nm")),
        ("2 µm", (2.0, "µm")),
        ("2 \u03bcm", (2.0, "µm")),  # Greek mu
        ("1um", (1.0, "µm")),
        ("0.5 μm", (0.5, "µm")),
        ("200nm", (200.0, "nm")),
        ("10 Å", (10.0, "Å")),
        ("10 \u212b", (10.0, "Å")),  # angstrom sign
        ("5 A", (5.0, "Å")),
        ("0,5 mm", (0.5, "mm")),
        ("HFW 1.73 mm", (1.73, "mm")),
        ("Scale: 100 nm ", (100.0, "nm")),
        ("1 micron", (1.0, "µm")),
        ("20 NM", (20.0, "nm")),
    ],
)
def test_parse_scale_label(text, expected):
    assert parse_scale_label(text) == expected


@pytest.mark.parametrize("text", ["", None, "garbage", "nm", "EHT = kV", "0 nm", "12 kV", "Mag = 105 X", "3 nmx"])
def test_parse_scale_label_rejects(text):
    assert parse_scale_label(text) is None


def test_pixel_size_from_scale_bar():
    assert pixel_size_from_scale_bar(100, 500, "nm") == pytest.approx(5.0)
    assert pixel_size_from_scale_bar(200, 2, "µm") == pytest.approx(10.0)
    assert pixel_size_from_scale_bar(50, 10, "Å") == pytest.approx(0.02)
    assert pixel_size_from_scale_bar(76.0, 200, "um") == pytest.approx(2631.6, rel=1e-4)
    with pytest.raises(ValueError):
        pixel_size_from_scale_bar(0, 500, "nm")
    with pytest.raises(ValueError):
        pixel_size_from_scale_bar(100, -1, "nm")
    with pytest.raises(ValueError):
        pixel_size_from_scale_bar(100, 1, "furlong")


def test_ocr_status():
    img, y0 = sem_with_bar()
    sb = detect_scale_bar(img, valid_region={"y1": y0})
    if ocr_available():
        assert sb["ocr"] in ("tesseract", "failed")
    else:
        assert sb["ocr"] == "unavailable"
        assert sb["label"] is None and sb["value"] is None and sb["pixel_size_nm"] is None
    off = detect_scale_bar(img, valid_region={"y1": y0}, ocr=False)
    assert off["ocr"] == "off" and off["length_px"] == 237.0


class _FakeTesseract:
    """Stands in for pytesseract: returns fixed words with boxes (in the upscaled crop)."""

    class Output:
        DICT = "dict"

    def __init__(self, words=None, fail=False):
        self.words = words or []
        self.fail = fail
        self.calls = 0

    def image_to_data(self, img, config="", output_type=None):
        self.calls += 1
        if self.fail:
            raise RuntimeError("tesseract crashed")
        keys = ("text", "left", "top", "width", "height")
        return {k: [w[i] for w in self.words] for i, k in enumerate(keys)}


def test_ocr_path_with_a_fake_tesseract(monkeypatch):
    import sys

    from napari_nanodefect.core import scalebar as sbmod

    img, y0 = sem_with_bar()
    monkeypatch.setattr(sbmod.shutil, "which", lambda name: "/usr/bin/" + name)
    # crop starts 40 px above the bar at x = 0 and is upscaled 3x; put "200 nm" right above
    # the bar and a distractor "5 nm" far away
    fake = _FakeTesseract(
        words=[("EHT", 900, 10, 40, 20), ("200", 300, 60, 45, 24), ("nm", 350, 60, 30, 24), ("5", 1500, 60, 10, 24),
               ("nm", 1515, 60, 30, 24)]
    )
    monkeypatch.setitem(sys.modules, "pytesseract", fake)
    sb = detect_scale_bar(img, valid_region={"y1": y0})
    assert fake.calls == 1
    assert sb["ocr"] == "tesseract" and sb["label"] == "200 nm"
    assert (sb["value"], sb["unit"]) == (200.0, "nm")
    assert sb["pixel_size_nm"] == pytest.approx(200 / 237)
    # no parsable label -> "failed", tesseract errors -> "failed", never an exception
    monkeypatch.setitem(sys.modules, "pytesseract", _FakeTesseract(words=[("EHT", 0, 0, 10, 10)]))
    sb = detect_scale_bar(img, valid_region={"y1": y0})
    assert sb["ocr"] == "failed" and sb["value"] is None and sb["length_px"] == 237.0
    monkeypatch.setitem(sys.modules, "pytesseract", _FakeTesseract(fail=True))
    sb = detect_scale_bar(img, valid_region={"y1": y0})
    assert sb["ocr"] == "failed" and sb["pixel_size_nm"] is None
    # ocr=False never calls it
    fake = _FakeTesseract(words=[("1", 0, 0, 5, 5), ("um", 6, 0, 5, 5)])
    monkeypatch.setitem(sys.modules, "pytesseract", fake)
    assert detect_scale_bar(img, valid_region={"y1": y0}, ocr=False)["ocr"] == "off" and fake.calls == 0


@pytest.mark.skipif(not ocr_available(), reason="tesseract / pytesseract not installed")
def test_ocr_reads_rendered_label():
    from PIL import Image, ImageDraw, ImageFont

    img, y0 = sem_with_bar(style="solid")
    img[y0 + 2 :] = 25
    img[y0 + 36 : y0 + 42, 40:277] = 255
    pil = Image.fromarray(img)
    try:
        font = ImageFont.load_default(size=20)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    ImageDraw.Draw(pil).text((120, y0 + 8), "500 nm", fill=255, font=font)
    sb = detect_scale_bar(np.array(pil), valid_region={"y1": y0})
    assert sb["ocr"] == "tesseract"
    assert (sb["value"], sb["unit"]) == (500.0, "nm")
    assert sb["pixel_size_nm"] == pytest.approx(500 / 237)


# ----------------------------------------------------------------------------- real


def _load(path, page=0):
    import tifffile
    from PIL import Image

    if str(path).lower().endswith((".tif", ".tiff")):
        a = tifffile.imread(path, key=page)
    else:
        a = np.array(Image.open(path))
    if a.ndim == 3:
        a = a[..., 0]
    return a


ZEISS = ("rosettasciio", "rsciio", "tests", "data", "tiff", "from_tiff_Zeiss_SEM.zip")


def _zeiss_value(path, key):
    import tifffile

    with tifffile.TiffFile(path) as tf:
        _, value, unit = tf.pages[0].tags[34118].value[key]
    return float(value) * {"nm": 1.0, "µm": 1e3, "um": 1e3, "mm": 1e6}[unit]


@pytest.mark.real
def test_real_fei_teneo():
    import tifffile

    p = real_file("imageio-binaries", "images", "fei-sem-rbc.tif")
    with tifffile.TiffFile(p) as tf:
        md = tf.fei_metadata
    rows = int(md["Image"]["ResolutionY"])  # 1024 image rows, the rest is the data bar
    px_nm = float(md["Scan"]["PixelWidth"]) * 1e9  # 7.708 nm
    a = _load(p)
    bar = detect_info_bar(a, vendor="FEI")
    assert bar is not None and abs(bar["y0"] - rows) <= 2
    assert bar["y0"] + bar["height"] == a.shape[0]
    sb = detect_scale_bar(a, valid_region=Region(0, 0, bar["y0"], a.shape[1]))
    assert sb is not None and sb["style"] == "split ticks"
    # label "4 µm" (read by eye); ticks at columns 948-949 and 1465-1466
    assert sb["length_px"] == pytest.approx(4000 / px_nm, rel=0.01)
    assert (sb["x0"], sb["x1"], sb["y0"], sb["y1"]) == (948, 1467, 1041, 1043)
    # the same image saved as JPEG (quality 85)
    j = _jpeg(a)
    assert detect_info_bar(j)["y0"] == bar["y0"]
    assert detect_scale_bar(j, valid_region={"y1": bar["y0"]})["length_px"] == sb["length_px"]


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.real
def test_real_fei_helios(bits):
    import tifffile

    p = real_file("rosettasciio", "rsciio", "tests", "data", "tiff", "from_tiff_FEI_Helios.zip",
                  f"FEI-Helios-Ebeam-{bits}bits.tif")
    with tifffile.TiffFile(p) as tf:
        md = tf.fei_metadata
    rows = int(md["Image"]["ResolutionY"])  # 442
    px_nm = float(md["Scan"]["PixelWidth"]) * 1e9  # 3372 nm
    a = _load(p)  # NB: the image area of this test file is blanked (all zero)
    bar = detect_info_bar(a)
    assert bar is not None and abs(bar["y0"] - rows) <= 2
    sb = detect_scale_bar(a, valid_region=Region(0, 0, bar["y0"], a.shape[1]))
    # label "500 µm" (read by eye), FEI |--- 500 µm ---| with tiny end serifs
    assert sb is not None and sb["length_px"] == pytest.approx(500_000 / px_nm, rel=0.01)


@pytest.mark.real
def test_real_zeiss_1k():
    p = real_file(*ZEISS, "test_tiff_Zeiss_SEM_1k.tif")
    a = _load(p)
    bar = detect_info_bar(a)
    # by eye / row profile: black frame line at row 691, white box to row 765, frame at 766,
    # and one row of image (767) under the box
    assert bar is not None and abs(bar["y0"] - 691) <= 2 and bar["height"] == a.shape[0] - bar["y0"]
    sb = detect_scale_bar(a, valid_region=Region(0, 0, bar["y0"], a.shape[1]))
    px_nm = _zeiss_value(p, "ap_image_pixel_size")  # 2.615 µm
    # label "200 µm" (read by eye); |--| bar, ticks at columns 21-22 and 97-98, rows 733-734
    assert sb is not None and sb["style"] == "ticks" and sb["polarity"] == "dark"
    assert sb["length_px"] == pytest.approx(200_000 / px_nm, rel=0.02)
    assert abs(sb["x0"] - 21) <= 1 and abs(sb["x1"] - 99) <= 1 and abs(sb["y0"] - 733) <= 1
    j = _jpeg(a)
    assert detect_info_bar(j)["y0"] == bar["y0"]
    assert detect_scale_bar(j, valid_region={"y1": bar["y0"]})["length_px"] == sb["length_px"]


@pytest.mark.real
def test_real_zeiss_512():
    p = real_file(*ZEISS, "test_tiff_Zeiss_SEM_512pix.tif")
    a = _load(p)
    bar = detect_info_bar(a)
    assert bar is not None and abs(bar["y0"] - 350) <= 2  # frame line at row 350
    sb = detect_scale_bar(a, valid_region=Region(0, 0, bar["y0"], a.shape[1]))
    # label "200 nm" (read by eye); the CZ_SEM "Pixel Size" refers to the 1024-px store
    # resolution, the 512-px image has Width / 512 = 11.65 nm per pixel
    px_nm = _zeiss_value(p, "ap_width") / 512
    assert sb is not None and sb["length_px"] == pytest.approx(200 / px_nm, rel=0.03)
    assert abs(sb["x0"] - 11) <= 1 and abs(sb["x1"] - 29) <= 1


@pytest.mark.parametrize("page", [0, 1])
@pytest.mark.real
def test_real_zeiss_multipage_has_no_burned_in_bar(page):
    # looked at both pages: FIB lamella to the last row, no data bar burned in
    a = _load(real_file(*ZEISS, "ZEISS_SEM_multipage.tif"), page)
    assert detect_info_bar(a, vendor="Zeiss") is None
    assert detect_scale_bar(a) is None


@pytest.mark.real
def test_real_zeiss_geminisem_ti_has_no_burned_in_bar():
    # the Ti-6Al-4V GeminiSEM TIFF (RGB, 1024x768, 111.6 nm/px) carries its data bar only
    # in the CZ_SEM metadata: looked at it, the micrograph runs to the last row
    p = real_file("grain-size-analysis-tools", "ex_segmentation", "sem_polished", "sem_alpha_beta_ti_6al_4v.tif")
    a = _load(p)
    assert a.shape == (768, 1024)
    assert detect_info_bar(a, vendor="Zeiss") is None
    assert detect_scale_bar(a) is None


@pytest.mark.real
def test_real_tvips_boxed_scale_bar():
    # TVIPS camera TIFF, 1.4208 nm/px (resolution tags); a white box at the bottom left
    # holds a black |---| bar labelled "200 nm" (read by eye); no data bar
    a = _load(real_file("rosettasciio", "rsciio", "tests", "data", "tiff", "from_TVIPS_bin4.zip", "TVIPS_bin4.tif"))
    assert detect_info_bar(a) is None
    sb = detect_scale_bar(a)
    assert sb is not None and sb["length_px"] == pytest.approx(200 / 1.4208, rel=0.01)
    assert (sb["x0"], sb["x1"]) == (8, 149)


@pytest.mark.real
def test_real_insitu_tem_black_bar():
    # cropped in-situ TEM frame: black band from row 514 with a white solid bar (x 70..264,
    # rows 554..567) labelled "50 nm" and "Time / Temp" text (looked at it)
    p = real_file("insitu-TEM-annealing-Ti", "Line Movement Frames", "Frames 1770-1786",
                  "Chip-4-Heat-1-Frame-1770-Cropped.png")
    a = _load(p)
    bar = detect_info_bar(a)
    assert bar is not None and abs(bar["y0"] - 514) <= 2
    sb = detect_scale_bar(a, valid_region=Region(0, 0, bar["y0"], a.shape[1]))
    assert sb is not None and sb["style"] == "solid"
    assert sb["length_px"] == 195.0 and (sb["y0"], sb["y1"]) == (554, 568)


@pytest.mark.real
def test_real_negatives_tem_stem():
    from conftest import REAL

    d = REAL / "stem-catalyst-nanoparticles"
    files = sorted(d.glob("**/*.jpg"))
    creme = REAL / "creme" / "data" / "ds25s" / "fov200nm" / "imgs"
    files += sorted(creme.glob("*.png"))
    if not files:
        pytest.skip("real TEM/STEM images not available (needs ../shared/data/real)")
    real_file("creme", "data", "ds25s", "fov200nm", "imgs", "1.png")
    for f in files:
        a = _load(f)
        assert detect_info_bar(a) is None, f.name
        assert detect_scale_bar(a) is None, f.name
