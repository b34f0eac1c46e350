"""TIFF/raster reading: vendor pixel sizes (real files and synthetic ones), plane rule, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import real_file
from napari_nanodefect import NanodefectError, read_image
from napari_nanodefect.cli import main
from napari_nanodefect.core.io.write import write_tiff
from napari_nanodefect.core.micrograph import analysed_plane

RSCIIO_TIFF = ("rosettasciio", "rsciio", "tests", "data", "tiff")

# -- the figures of the foundation issue (each within 1 %) -----------------------------

REAL_FIGURES = [
    (("imageio-binaries", "images", "fei-sem-rbc.tif"), 7.708, "FEI"),
    ((*RSCIIO_TIFF, "from_tiff_Zeiss_SEM.zip", "test_tiff_Zeiss_SEM_512pix.tif"), 11.65, "Zeiss"),
    ((*RSCIIO_TIFF, "from_tiff_Zeiss_SEM.zip", "ZEISS_SEM_multipage.tif"), 12.33, "Zeiss"),
    ((*RSCIIO_TIFF, "from_TVIPS_bin4.zip", "TVIPS_bin4.tif"), 1.4208, "TVIPS"),
    (("grain-size-analysis-tools", "ex_segmentation", "sem_polished", "sem_alpha_beta_ti_6al_4v.tif"), 111.6, "Zeiss"),
    ((*RSCIIO_TIFF, "test_loading_image_saved_with_DM.tif"), 168.68, "Gatan"),
    ((*RSCIIO_TIFF, "test_loading_image_saved_with_imageJ.tif"), 168.68, "ImageJ"),
    ((*RSCIIO_TIFF, "from_tiff_FEI_Helios.zip", "FEI-Helios-Ebeam-16bits.tif"), 3372.4, "FEI"),
    ((*RSCIIO_TIFF, "from_tiff_Zeiss_SEM.zip", "test_tiff_Zeiss_SEM_1k.tif"), 2614.5, "Zeiss"),
]


@pytest.mark.real
@pytest.mark.parametrize("parts,expected,vendor", REAL_FIGURES, ids=[p[0][-1] for p in REAL_FIGURES])
def test_real_vendor_pixel_sizes(parts, expected, vendor):
    m = read_image(real_file(*parts))
    assert m.pixel_size_nm == pytest.approx(expected, rel=0.01)
    assert vendor in m.vendor
    assert m.pixel_size_source


@pytest.mark.real
def test_zeiss_512_uses_width_not_store_resolution_pixel_size():
    m = read_image(real_file(*RSCIIO_TIFF, "from_tiff_Zeiss_SEM.zip", "test_tiff_Zeiss_SEM_512pix.tif"))
    assert m.data.shape == (384, 512)
    assert m.pixel_size_nm == pytest.approx(5965 / 512, rel=1e-3)  # not the 5.825 nm "Pixel Size"
    assert "Width" in m.pixel_size_source
    assert m.data.dtype == np.uint8  # grey palette with Zeiss overlay entries: index = grey


@pytest.mark.real
def test_fei_databar_from_metadata():
    m = read_image(real_file("imageio-binaries", "images", "fei-sem-rbc.tif"))
    assert m.data.shape == (1094, 1536)
    assert m.valid_region.to_dict() == {"y0": 0, "x0": 0, "y1": 1024, "x1": 1536}
    assert m.valid_data.shape == (1024, 1536)


@pytest.mark.real
def test_zeiss_multipage_pages_and_plane():
    path = real_file(*RSCIIO_TIFF, "from_tiff_Zeiss_SEM.zip", "ZEISS_SEM_multipage.tif")
    m0, m1 = read_image(path), read_image(path, plane=1)
    assert m0.metadata["n_planes"] == 2 and m0.data.shape == (1536, 2048)
    with tifffile.TiffFile(path) as tif:
        np.testing.assert_array_equal(m1.data, tif.pages[1].asarray())
    with pytest.raises(NanodefectError, match="plane 2"):
        read_image(path, plane=2)


@pytest.mark.real
def test_olympus_picks_16bit_data_page_not_jpeg_preview():
    m = read_image(real_file(*RSCIIO_TIFF, "olympus_SIS.tif"))
    assert m.data.dtype == np.uint16 and m.data.shape == (101, 112)


@pytest.mark.real
def test_info_json_cli_on_real_file(capsys):
    path = real_file("imageio-binaries", "images", "fei-sem-rbc.tif")
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for key in ("pixel_size_nm", "shape", "dtype", "vendor", "pixel_size_source", "valid_region", "scale_bar"):
        assert key in info
    assert info["pixel_size_nm"] == pytest.approx(7.708, rel=0.01)
    assert info["shape"] == [1094, 1536] and info["dtype"] == "uint8"
    assert info["valid_region"]["y1"] == 1024


# -- synthetic vendor files (no ../shared needed) ------------------------------------------

def _img(shape=(64, 80), dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)


def test_fei_tag_synthetic(tmp_path):
    ini = "[User]\r\nUser=me\r\n[Scan]\r\nPixelWidth=2.5e-09\r\nPixelHeight=2.5e-09\r\n[Image]\r\nResolutionX=80\r\nResolutionY=50\r\n"
    p = tmp_path / "fei.tif"
    tifffile.imwrite(p, _img(), extratags=[(34682, "s", 0, ini, True)])
    m = read_image(p)
    assert m.pixel_size_nm == pytest.approx(2.5)
    assert m.vendor.startswith("FEI")
    assert m.valid_region.y1 == 50 and m.info_bar["height"] == 14


def _cz_sem(fields):
    lines = ["0", "0", "0", "1e-08"]
    for key, text in fields:
        lines += [key.upper(), text]
    return "\r\n".join(lines) + "\r\n"


@pytest.mark.parametrize(
    "fields,expected",
    [
        # 512-px save of a 1024-px scan: "Pixel Size" is for the store resolution -> Width/512
        ([("ap_pixel_size", "Pixel Size = 5.825 nm"), ("ap_width", "Width = 5.965 µm")], 5965 / 80),
        # two pixel-size fields disagree: the one matching Width / image width wins
        ([("ap_pixel_size", "Pixel Size = 24.65 nm"), ("ap_image_pixel_size", "Image Pixel Size = 12.33 nm"),
          ("ap_width", "Width = 0.9864 µm")], 12.33),
        # no width at all: the image pixel size field is used
        ([("ap_image_pixel_size", "Image Pixel Size = 3.1 nm")], 3.1),
    ],
)
def test_zeiss_tag_synthetic(tmp_path, fields, expected):
    p = tmp_path / "zeiss.tif"
    tifffile.imwrite(p, _img(), extratags=[(34118, "s", 0, _cz_sem(fields).encode("latin-1"), True)])
    m = read_image(p)
    assert m.vendor == "Zeiss"
    assert m.pixel_size_nm == pytest.approx(expected, rel=1e-3)


def test_hitachi_sidecar(tmp_path):
    p = tmp_path / "su8230_001.tif"
    tifffile.imwrite(p, _img((70, 80)))
    (tmp_path / "su8230_001.txt").write_text(
        "[SemImageFile]\nInstructName=SU8230\nImageName=su8230_001.tif\nDataSize=80x60\nPixelSize=4.961\nMagnification=25000\n"
    )
    m = read_image(p)
    assert m.pixel_size_nm == pytest.approx(4.961)
    assert "Hitachi" in m.vendor and "sidecar" in m.pixel_size_source
    assert m.valid_region.y1 == 60
    # the same rule for BMP/JPG exports
    bmp = tmp_path / "su8230_002.bmp"
    Image.fromarray(_img((70, 80))).save(bmp)
    (tmp_path / "su8230_002.txt").write_text("InstructName=SU8230\nImageName=su8230_002.bmp\nPixelSize=9.9\n")
    assert read_image(bmp).pixel_size_nm == pytest.approx(9.9)


def test_imagej_roundtrip_via_writer(tmp_path):
    data = _img((33, 47), np.uint16)
    p = write_tiff(tmp_path / "cal.tif", data, pixel_size_nm=0.37)
    m = read_image(p)
    np.testing.assert_array_equal(m.data, data)
    assert m.pixel_size_nm == pytest.approx(0.37, rel=1e-6)
    assert "ImageJ" in m.pixel_size_source


def test_ome_tiff(tmp_path):
    p = tmp_path / "x.ome.tif"
    tifffile.imwrite(p, _img(), ome=True, metadata={"axes": "YX", "PhysicalSizeX": 0.25, "PhysicalSizeXUnit": "µm",
                                                     "PhysicalSizeY": 0.25, "PhysicalSizeYUnit": "µm"})
    m = read_image(p)
    assert m.pixel_size_nm == pytest.approx(250.0)
    assert "OME" in m.pixel_size_source


def test_resolution_tags_cm_and_default_dpi(tmp_path):
    p = tmp_path / "cm.tif"
    tifffile.imwrite(p, _img(), resolution=(1e6, 1e6), resolutionunit="CENTIMETER")  # 1e6 px/cm = 10 nm
    assert read_image(p).pixel_size_nm == pytest.approx(10.0)
    q = tmp_path / "dpi.tif"
    tifffile.imwrite(q, _img(), resolution=(72, 72), resolutionunit="INCH")  # a screen default, not a scale
    m = read_image(q)
    assert m.pixel_size_nm is None and m.pixel_size_source is None


def test_user_pixel_size_overrides(tmp_path):
    p = tmp_path / "plain.png"
    Image.fromarray(_img()).save(p)
    assert read_image(p).pixel_size_nm is None
    m = read_image(p, pixel_size_nm=1.5)
    assert m.pixel_size_nm == 1.5 and m.pixel_size_source == "user"


# -- the analysed-plane rule -----------------------------------------------------------------

def test_plane_rule_rgb_grey_and_colour():
    grey = _img()
    rgb = np.stack([grey] * 3, -1)
    out, rule, _ = analysed_plane(rgb)
    np.testing.assert_array_equal(out, grey)
    assert out.dtype == np.uint8 and "first channel" in rule
    col = rgb.copy()
    col[..., 0] = 0
    out, rule, _ = analysed_plane(np.concatenate([col, np.full(grey.shape + (1,), 255, np.uint8)], -1))
    np.testing.assert_allclose(out, 0.587 * grey + 0.114 * grey, rtol=1e-5)
    assert "alpha dropped" in rule and "luminance" in rule


def test_plane_rule_pages_dtypes():
    stack = np.stack([_img(seed=i) for i in range(3)])
    out, rule, extra = analysed_plane(stack, plane=2)
    np.testing.assert_array_equal(out, stack[2])
    assert extra["n_planes"] == 3
    assert analysed_plane(np.zeros((5, 5), bool))[0].dtype == np.uint8
    assert analysed_plane(np.zeros((5, 5), np.float64))[0].dtype == np.float32
    assert analysed_plane(np.zeros((5, 5), np.int32))[0].dtype == np.int32
    with pytest.raises(NanodefectError, match="NaN"):
        analysed_plane(np.full((4, 4), np.nan))
    with pytest.raises(NanodefectError, match="empty"):
        analysed_plane(np.zeros((0, 5)))
    with pytest.raises(NanodefectError, match="complex"):
        analysed_plane(np.zeros((4, 4), complex))


def test_palette_png_and_tiff(tmp_path):
    idx = _img((40, 50)) % 4
    pal = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12)
    im = Image.fromarray(idx.astype(np.uint8), mode="P")
    im.putpalette(pal)
    im.save(tmp_path / "pal.png")
    m = read_image(tmp_path / "pal.png")
    lum = np.array([0, 0.299 * 255, 0.587 * 255, 0.114 * 255], np.float32)[idx]
    np.testing.assert_allclose(m.data, lum, rtol=1e-5)
    # a grey-ramp palette TIFF keeps the index as the grey value
    cmap = np.tile(np.arange(256, dtype=np.uint16) * 257, (3, 1))
    tifffile.imwrite(tmp_path / "grey_pal.tif", idx.astype(np.uint8), photometric="palette", colormap=cmap)
    np.testing.assert_array_equal(read_image(tmp_path / "grey_pal.tif").data, idx)


def test_16bit_png_and_float_tiff(tmp_path):
    d16 = _img((20, 30), np.uint16)
    Image.fromarray(d16).save(tmp_path / "d16.png")
    np.testing.assert_array_equal(read_image(tmp_path / "d16.png").data, d16)
    f = np.random.default_rng(1).normal(size=(20, 30)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", f)
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif").data, f)
    f[3, 4] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", f)
    with pytest.raises(NanodefectError, match="nan.tif.*NaN"):
        read_image(tmp_path / "nan.tif")


# -- bad input: a clear error naming the file ------------------------------------------------

@pytest.mark.parametrize(
    "name,content,match",
    [
        ("empty.tif", b"", "empty"),
        ("junk.tif", b"this is not a tiff at all" * 10, "not a readable TIFF"),
        ("junk.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a readable image"),
        ("what.xyz123", b"\x01\x02\x03", "unknown image format"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, name, content, match):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(NanodefectError, match=match) as info:
        read_image(p)
    assert name in str(info.value)


def test_truncated_tiff(tmp_path):
    p = tmp_path / "full.tif"
    tifffile.imwrite(p, _img((256, 256)))
    raw = p.read_bytes()
    for cut in (8, 100, len(raw) // 2, len(raw) - 10):
        q = tmp_path / f"cut{cut}.tif"
        q.write_bytes(raw[:cut])
        with pytest.raises(NanodefectError) as info:
            read_image(q)
        assert q.name in str(info.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(NanodefectError, match="not found"):
        read_image(tmp_path / "nope.tif")
    with pytest.raises(NanodefectError, match="folder"):
        read_image(tmp_path)


def test_cli_error_is_one_line(tmp_path, capsys):
    p = tmp_path / "bad.tif"
    p.write_bytes(b"garbage")
    assert main(["info", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nanodefect: error:") and "bad.tif" in err and "\n" not in err
