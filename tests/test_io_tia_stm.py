"""FEI TIA (.emi/.ser) and STM/SPM ASCII height-map readers.

Real files come from ../shared (skipped when absent); synthetic .ser files and text
height maps are written here so the round trips run everywhere.
"""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest
from conftest import real_file

from napari_nanodefect.core.errors import NanodefectError
from napari_nanodefect.core.io import read_image
from napari_nanodefect.core.io.stm import heights_to_uint8, read_stm_ascii
from napari_nanodefect.core.io.tia import find_tia_files, read_emi_metadata, read_tia

TIA = ("rosettasciio", "rsciio", "tests", "data", "tia")
OLD_EMI = (*TIA, "old", "03_Scanning Preview.emi")
OLD_SER = (*TIA, "old", "03_Scanning Preview_1.ser")
NEW_EMI = (*TIA, "new", "128x128-TEM_search.emi")
NEW_SER = (*TIA, "new", "128x128-TEM_search_1.ser")


def rel_close(a, b, tol=0.01):
    return abs(a - b) <= tol * abs(b)


# =========================================================================== TIA: real files


@pytest.mark.real
def test_real_tia_old_series_of_five_frames():
    m = read_tia(real_file(*OLD_EMI))
    assert m.shape == (128, 128)
    assert m.dtype == np.uint16
    assert m.metadata["n_planes"] == 5
    assert rel_close(m.pixel_size_nm, 0.3844)
    assert rel_close(m.pixel_size_yx_nm[0], 0.3844)
    assert "FEI TIA .ser calibration" in m.pixel_size_source
    assert m.vendor == "FEI TIA"
    assert m.metadata["ser_series_version"] == "0x0210"
    assert m.metadata["magnification"] == 1300000
    assert m.metadata["high_tension_kV"] == pytest.approx(200)
    assert "TitanCubed" in m.metadata["microscope"]
    assert m.plane_rule == "plane 0 of 5"
    last = read_tia(real_file(*OLD_EMI), plane=4)
    assert last.plane_rule == "plane 4 of 5"
    assert not np.array_equal(last.data, m.data)
    with pytest.raises(NanodefectError, match="plane 5"):
        read_tia(real_file(*OLD_EMI), plane=5)


@pytest.mark.real
def test_real_tia_new_single_int32_image():
    m = read_tia(real_file(*NEW_EMI))
    assert m.shape == (128, 128)
    assert m.dtype == np.int32
    assert m.metadata["n_planes"] == 1
    assert m.plane_rule == "2-D image"
    assert rel_close(m.pixel_size_nm, 5.261)
    assert m.metadata["ser_series_version"] == "0x0220"
    assert m.metadata["magnification"] == 22500
    assert m.metadata["camera"] == "BM-Ceta"
    assert "Talos" in m.metadata["microscope"]


@pytest.mark.real
def test_real_tia_ser_path_finds_the_emi_and_reads_the_same():
    a = read_tia(real_file(*OLD_EMI), plane=2)
    b = read_tia(real_file(*OLD_SER), plane=2)
    np.testing.assert_array_equal(a.data, b.data)
    assert a.pixel_size_nm == b.pixel_size_nm
    assert b.metadata["emi_file"] == "03_Scanning Preview.emi"
    ser, emi = find_tia_files(real_file(*NEW_EMI))
    assert ser.name == "128x128-TEM_search_1.ser" and emi.name == "128x128-TEM_search.emi"


@pytest.mark.real
@pytest.mark.parametrize("parts", [OLD_EMI, NEW_EMI, OLD_SER, NEW_SER])
def test_real_tia_matches_rosettasciio(parts):
    rsciio_tia = pytest.importorskip("rsciio.tia")
    path = real_file(*parts)
    ref = rsciio_tia.file_reader(str(path))[0]
    stack = ref["data"] if ref["data"].ndim == 3 else ref["data"][None]
    ours = read_tia(path)
    assert ours.metadata["n_planes"] == stack.shape[0]
    for i in range(stack.shape[0]):
        got = read_tia(path, plane=i).data
        assert got.dtype == stack.dtype
        np.testing.assert_array_equal(got, stack[i])
    x_axis = [ax for ax in ref["axes"] if ax.get("name") == "x"][0]
    assert x_axis["units"] == "nm"
    assert ours.pixel_size_nm == pytest.approx(float(x_axis["scale"]), rel=1e-9)


@pytest.mark.real
def test_real_tia_through_read_image():
    m = read_image(real_file(*NEW_EMI), detect_info_bar=False, detect_scale_bar=False)
    assert m.vendor == "FEI TIA" and rel_close(m.pixel_size_nm, 5.261)


# =========================================================================== TIA: synthetic


SER_CODES = {"u1": 1, "u2": 2, "u4": 3, "i1": 4, "i2": 5, "i4": 6, "f4": 7, "f8": 8}


def write_ser(
    path,
    frames,
    *,
    version=0x0220,
    delta_m=(2.5e-10, 2.5e-10),
    total=None,
    data_type_id=0x4122,
    endian="<",
):
    """Minimal TIA .ser writer: a 1-D series of 2-D images with time tags.

    ``frames`` are top-row-first images; TIA stores rows bottom-up, so they are flipped.
    ``delta_m`` is (y, x) CalibrationDelta in metres. ``total`` > len(frames) leaves unused
    slots in the offset array (as TIA does when a series is stopped early).
    """
    e = endian
    n = len(frames)
    total = n if total is None else total
    osize = 4 if version == 0x0210 else 8
    ofmt = "i" if osize == 4 else "q"
    desc, units = b"Number", b""
    dims = struct.pack(e + "iddii", total, 0.0, 1.0, 0, len(desc)) + desc + struct.pack(e + "i", len(units)) + units
    head_len = 2 + struct.calcsize(e + "hhiiii") + osize + 4
    array_pos = head_len + len(dims)
    pos = array_pos + 2 * total * osize
    data_offsets, tag_offsets, blobs = [], [], []
    for i, f in enumerate(frames):
        f = np.asarray(f)
        ny, nx = f.shape
        code = SER_CODES[f.dtype.str[1:]]
        head = struct.pack(e + "ddiddihii", -1e-8, delta_m[1], 0, -1e-8, delta_m[0], 0, code, nx, ny)
        pixels = np.ascontiguousarray(f[::-1]).astype(f.dtype.newbyteorder(e)).tobytes()
        data_offsets.append(pos)
        blobs.append(head + pixels)
        pos += len(head) + len(pixels)
        tag_offsets.append(pos)
        tag = struct.pack(e + "hhi", 0x4152, 0, 1_600_000_000 + i)  # tag type, (unused), time
        blobs.append(tag)
        pos += len(tag)
    pad = [0] * (total - n)
    header = (b"II" if e == "<" else b"MM") + struct.pack(
        e + "hhiiii", 0x0197, version, data_type_id, 0x4152, total, n
    )
    header += struct.pack(e + ofmt, array_pos) + struct.pack(e + "i", 1)
    offsets = struct.pack(e + ofmt * (2 * total), *(data_offsets + pad + tag_offsets + pad))
    path.write_bytes(header + dims + offsets + b"".join(blobs))
    return path


EMI_XML = (
    "<ObjectInfo><ExperimentalConditions><MicroscopeConditions><AcceleratingVoltage>300000"
    "</AcceleratingVoltage></MicroscopeConditions></ExperimentalConditions><ExperimentalDescription><Root>"
    "<Data><Label>Microscope</Label><Value>Microscope Test 300 kV</Value><Unit></Unit></Data>"
    "<Data><Label>Magnification</Label><Value>450000</Value><Unit>x</Unit></Data>"
    "</Root></ExperimentalDescription><AcquireInfo><Magnification>450000 X</Magnification></AcquireInfo>"
    "<Manufacturer>FEI</Manufacturer></ObjectInfo>"
)


def frames_of(dtype, n=3, shape=(12, 17), seed=0):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is None:
        return [rng.normal(size=shape).astype(dtype) for _ in range(n)]
    return [rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype) for _ in range(n)]


@pytest.mark.parametrize("version", [0x0210, 0x0220])
@pytest.mark.parametrize("dtype", ["u1", "u2", "i2", "i4", "f4"])
def test_synthetic_ser_round_trip(tmp_path, version, dtype):
    frames = frames_of(dtype)
    ser = write_ser(tmp_path / "scan_1.ser", frames, version=version, delta_m=(1.5e-9, 1.5e-9), total=10)
    for i, f in enumerate(frames):
        m = read_tia(ser, plane=i)
        assert m.data.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(m.data, f)
        assert m.pixel_size_nm == pytest.approx(1.5)
        assert m.metadata["n_planes"] == 3
        assert m.metadata["ser_series_version"] == f"{version:#06x}"
        assert "emi_file" not in m.metadata  # no .emi: fine, it is optional
    with pytest.raises(NanodefectError, match="plane 3"):
        read_tia(ser, plane=3)


def test_synthetic_ser_float64_becomes_float32_and_rectangular_pixels(tmp_path):
    frames = frames_of("f8", n=1)
    ser = write_ser(tmp_path / "a_1.ser", frames, delta_m=(2e-9, 1e-9), version=0x0210)
    m = read_tia(ser)
    assert m.dtype == np.float32
    np.testing.assert_allclose(m.data, frames[0].astype(np.float32))
    assert m.pixel_size_nm == pytest.approx(1.0)
    assert m.pixel_size_yx_nm == pytest.approx((2.0, 1.0))
    assert m.metadata["n_planes"] == 1


def test_synthetic_big_endian_ser(tmp_path):
    frames = frames_of("u2", n=2)
    ser = write_ser(tmp_path / "b_1.ser", frames, endian=">")
    np.testing.assert_array_equal(read_tia(ser, plane=1).data, frames[1])


def test_synthetic_emi_pairs_with_ser(tmp_path):
    frames = frames_of("u2", n=2)
    write_ser(tmp_path / "my [scan]_1.ser", frames, delta_m=(3e-10, 3e-10))
    emi = tmp_path / "my [scan].emi"
    emi.write_bytes(b"JK\x00\x02binary header\x00\x01" + EMI_XML.encode() + b"\r\n\x00binary tail")
    m = read_tia(emi, plane=1)
    np.testing.assert_array_equal(m.data, frames[1])
    assert m.pixel_size_nm == pytest.approx(0.3)
    assert m.metadata["magnification"] == 450000
    assert m.metadata["high_tension_kV"] == pytest.approx(300)
    assert m.metadata["microscope"] == "Test 300 kV"
    assert m.metadata["manufacturer"] == "FEI"
    assert read_tia(tmp_path / "my [scan]_1.ser").metadata["emi_file"] == "my [scan].emi"


def test_emi_without_useful_metadata_is_tolerated(tmp_path):
    write_ser(tmp_path / "x_1.ser", frames_of("u1", n=1))
    (tmp_path / "x.emi").write_bytes(b"\x00\x01 no xml here")
    m = read_tia(tmp_path / "x.emi")
    assert "magnification" not in m.metadata and m.pixel_size_nm == pytest.approx(0.25)
    assert read_emi_metadata(tmp_path / "x.emi") == {}
    (tmp_path / "y.emi").write_bytes(b"<ObjectInfo><Manufacturer>FEI</Manufacturer></ObjectInfo>")
    assert read_emi_metadata(tmp_path / "y.emi") == {"manufacturer": "FEI"}


def test_synthetic_ser_through_read_image(tmp_path):
    frames = frames_of("i2", n=2)
    ser = write_ser(tmp_path / "r_1.ser", frames)
    m = read_image(ser, plane=1, detect_info_bar=False, detect_scale_bar=False)
    np.testing.assert_array_equal(m.data, frames[1])
    assert m.vendor == "FEI TIA"


def test_synthetic_ser_is_readable_by_rosettasciio(tmp_path):
    """Cross-check the test writer itself against an independent reader."""
    rsciio_tia = pytest.importorskip("rsciio.tia")
    frames = frames_of("u2", n=3)
    ser = write_ser(tmp_path / "c_1.ser", frames, version=0x0210, delta_m=(4e-10, 4e-10), total=5)
    ref = rsciio_tia.file_reader(str(ser))[0]
    np.testing.assert_array_equal(ref["data"], np.stack(frames))
    for i in range(3):
        np.testing.assert_array_equal(read_tia(ser, plane=i).data, ref["data"][i])


def test_implausible_calibration_gives_no_pixel_size(tmp_path):
    ser = write_ser(tmp_path / "d_1.ser", frames_of("u1", n=1), delta_m=(5e6, 5e6))  # reciprocal space, 1/m
    m = read_tia(ser)
    assert m.pixel_size_nm is None and m.pixel_size_source is None
    assert "pixel_size_warning" in m.metadata


def test_emi_picks_its_own_lowest_numbered_ser(tmp_path):
    for name, value in (("a_10.ser", 10), ("a_2.ser", 2), ("a_b_1.ser", 99)):
        write_ser(tmp_path / name, [np.full((4, 5), value, dtype=np.uint8)])
    (tmp_path / "a.emi").write_bytes(b"")
    assert find_tia_files(tmp_path / "a.emi")[0].name == "a_2.ser"
    assert read_tia(tmp_path / "a.emi").data.max() == 2


def test_tia_missing_and_wrong_files(tmp_path):
    (tmp_path / "lonely.emi").write_bytes(b"<ObjectInfo></ObjectInfo>")
    with pytest.raises(NanodefectError, match="lonely_1.ser"):
        read_tia(tmp_path / "lonely.emi")
    spectra = write_ser(tmp_path / "s_1.ser", frames_of("u1", n=1), data_type_id=0x4120)
    with pytest.raises(NanodefectError, match="1-D spectra"):
        read_tia(spectra)
    empty = write_ser(tmp_path / "e_1.ser", [], total=4)
    with pytest.raises(NanodefectError, match="no images"):
        read_tia(empty)
    (tmp_path / "t_1.ser").write_bytes(b"II*\x00" + bytes(100))  # a TIFF, not a .ser
    with pytest.raises(NanodefectError, match="not a TIA"):
        read_tia(tmp_path / "t_1.ser")


def assert_clean_error(path, reader=read_tia, **kw):
    """``reader`` must raise NanodefectError naming ``path`` (no other exception, no hang)."""
    t0 = time.perf_counter()
    with pytest.raises(NanodefectError) as info:
        reader(path, **kw)
    assert path.name in str(info.value)
    assert time.perf_counter() - t0 < 5
    return info.value


def test_truncated_ser_files(tmp_path):
    good = write_ser(tmp_path / "g_1.ser", frames_of("u2", n=3, shape=(20, 30)), version=0x0210)
    raw = good.read_bytes()
    cuts = [1, 2, 5, 10, 20, 26, 29, 31, 40, 60, 100, len(raw) // 2, len(raw) - 1300, len(raw) - 9]
    for cut in cuts:
        bad = tmp_path / f"cut{cut}_1.ser"
        bad.write_bytes(raw[:cut])
        err = assert_clean_error(bad, plane=2)
        assert "truncated" in str(err) or "beyond the end" in str(err) or "not a TIA" in str(err)
    # the last 8 bytes are the time tag of frame 2: the images are intact without it
    (tmp_path / "notag_1.ser").write_bytes(raw[:-8])
    np.testing.assert_array_equal(read_tia(tmp_path / "notag_1.ser", plane=2).data, read_tia(good, plane=2).data)
    # frame 0 lies before the cut and still reads
    partial = tmp_path / "partial_1.ser"
    partial.write_bytes(raw[: len(raw) - 1300])
    assert read_tia(partial, plane=0).shape == (20, 30)


def patched(raw: bytes, offset: int, fmt: str, value) -> bytes:
    return raw[:offset] + struct.pack("<" + fmt, value) + raw[offset + struct.calcsize("<" + fmt) :]


def test_corrupt_ser_headers_do_not_allocate(tmp_path):
    good = write_ser(tmp_path / "h_1.ser", frames_of("u2", n=1, shape=(8, 8)), version=0x0220)
    raw = good.read_bytes()
    dims_end = 34 + struct.calcsize("<iddii") + 6 + 4
    element = struct.unpack_from("<q", raw, dims_end)[0]
    variants = {
        "version": patched(raw, 4, "h", 0x0300),
        "total": patched(raw, 14, "i", 2_000_000_000),
        "valid": patched(raw, 18, "i", 7),
        "negative": patched(raw, 18, "i", -3),
        "offsets": patched(raw, 22, "q", 10**15),
        "ndims": patched(raw, 30, "i", 10**6),
        "desclen": patched(raw, 34 + 24, "i", 10**9),
        "element": patched(raw, dims_end, "q", -40),
        "dtype": patched(raw, element + 40, "h", 42),
        "huge": patched(patched(raw, element + 42, "i", 100_000), element + 46, "i", 100_000),
        "zero": patched(raw, element + 42, "i", 0),
    }
    for name, data in variants.items():
        bad = tmp_path / f"{name}_1.ser"
        bad.write_bytes(data)
        assert_clean_error(bad)


def test_random_and_fuzzed_ser_files(tmp_path):
    rng = np.random.default_rng(1234)
    noise = tmp_path / "noise_1.ser"
    noise.write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert_clean_error(noise)
    magic = tmp_path / "magic_1.ser"
    magic.write_bytes(b"II\x97\x01\x20\x02" + rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert_clean_error(magic)
    raw = write_ser(tmp_path / "f_1.ser", frames_of("u1", n=2, shape=(6, 7))).read_bytes()
    fuzz = tmp_path / "fuzz_1.ser"
    for _ in range(300):
        data = bytearray(raw)
        for pos in rng.integers(0, 200, size=3):
            data[pos] = int(rng.integers(0, 256))
        fuzz.write_bytes(bytes(data))
        try:
            m = read_tia(fuzz)
        except NanodefectError as exc:
            assert "fuzz_1.ser" in str(exc)
        else:
            assert m.data.ndim == 2


# =========================================================================== STM / SPM ASCII


def bump(rows=64, cols=80, amplitude=3.2, base=0.0):
    """A Gaussian bump of known amplitude on a flat base."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    return base + amplitude * np.exp(-((xx - cols / 2) ** 2 + (yy - rows / 2.5) ** 2) / (2 * 7.0**2))


def printed(h, fmt):
    """The values as they read back after printing with ``fmt``."""
    return np.array([[float(format(v, fmt)) for v in row] for row in h])


def expected_uint8(h):
    return np.rint((h - h.min()) / (h.max() - h.min()) * 255).astype(np.uint8)


def write_matrix(path, header, h, fmt=".6e", sep="\t", decimal="."):
    lines = list(header)
    for row in h:
        lines.append(sep.join(format(v, fmt).replace(".", decimal) for v in row))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def check_height_map(m, written):
    np.testing.assert_array_equal(m.heights, written)
    assert m.data.dtype == np.uint8
    assert m.data.min() == 0 and m.data.max() == 255
    np.testing.assert_array_equal(m.data, expected_uint8(written))
    assert m.metadata["normalisation"].startswith("data = round((H - Hmin) / (Hmax - Hmin) * 255)")


def test_wsxm_ascii_matrix(tmp_path):
    h = bump(64, 80, amplitude=3.2, base=-0.4)
    header = [
        "WSxM file copyright UAM",
        "WSxM ASCII Matrix file",
        "X Amplitude: 100 nm",
        "Y Amplitude: 64 nm",
        "Z Amplitude: 3.2 nm",
        "Number of rows: 64",
        "Number of columns: 80",
        "",
    ]
    m = read_stm_ascii(write_matrix(tmp_path / "bump.txt", header, h))
    check_height_map(m, printed(h, ".6e"))
    assert m.vendor == "WSxM"
    assert m.pixel_size_nm == pytest.approx(100 / 80)
    assert m.pixel_size_yx_nm == pytest.approx((1.0, 1.25))
    assert "WSxM header" in m.pixel_size_source
    assert m.height_unit == "nm"
    assert m.metadata["z_amplitude"] == pytest.approx(3.2)
    assert m.metadata["format"] == "WSxM ASCII matrix"
    assert m.heights.max() - m.heights.min() == pytest.approx(3.2, rel=0.01)


def test_wsxm_micrometres_latin1_without_counts(tmp_path):
    h = bump(32, 32, amplitude=12.0)
    path = tmp_path / "um.asc"
    text = "WSxM file copyright UAM\nWSxM ASCII Matrix file\nX Amplitude: 1.6 \xb5m\nY Amplitude: 1.6 \xb5m\n"
    text += "Z Amplitude: 12 nm\n" + "\n".join(" ".join(f"{v:.4f}" for v in r) for r in h)
    path.write_bytes(text.encode("latin-1"))
    m = read_stm_ascii(path)
    assert m.pixel_size_nm == pytest.approx(50.0)
    check_height_map(m, printed(h, ".4f"))


def test_generic_key_value_export(tmp_path):
    h = bump(40, 50, amplitude=0.8)
    header = ["# XPMPPro export", "Scan Size = 2 um x 1.6 um", "Z unit = nm", "Rows = 40", "Columns = 50"]
    m = read_stm_ascii(write_matrix(tmp_path / "xpm.dat", header, h, fmt=".5f", sep=", "))
    check_height_map(m, printed(h, ".5f"))
    assert m.vendor == "SPM ASCII"
    assert m.pixel_size_yx_nm == pytest.approx((40.0, 40.0))
    assert m.height_unit == "nm"
    assert m.metadata["separator"] == "comma"


def test_gwyddion_like_semicolon_decimal_comma(tmp_path):
    h = bump(30, 60, amplitude=2e-9)
    header = ["# Channel: Height", "# Width: 1.200 µm", "# Height: 600 nm", "# Value units: m"]
    m = read_stm_ascii(write_matrix(tmp_path / "gwy.txt", header, h, fmt=".6e", sep=";", decimal=","))
    check_height_map(m, printed(h, ".6e"))
    assert m.pixel_size_yx_nm == pytest.approx((20.0, 20.0))
    assert m.height_unit == "m"


def test_direct_pixel_size_key(tmp_path):
    h = bump(20, 20)
    m = read_stm_ascii(write_matrix(tmp_path / "px.txt", ["Pixel size: 0.5 nm"], h, fmt=".6f", sep=" "))
    assert m.pixel_size_nm == pytest.approx(0.5)


def test_plain_matrix_without_header(tmp_path):
    h = bump(25, 35, amplitude=5.0)
    path = tmp_path / "plain.txt"
    np.savetxt(path, h, fmt="%.8g")
    m = read_stm_ascii(path)
    check_height_map(m, printed(h, ".8g"))
    assert m.pixel_size_nm is None and m.pixel_size_source is None
    assert m.height_unit is None
    assert m.metadata["format"] == "plain matrix"


def test_wsxm_xyz(tmp_path):
    h = bump(16, 20, amplitude=1.5)
    lines = ["WSxM file copyright UAM", "WSxM ASCII XYZ file", "X[nm]\tY[nm]\tZ[nm]"]
    for i in range(16):  # first line is the top row (largest Y)
        for j in range(20):
            lines.append(f"{j * 2.5:.3f}\t{(15 - i) * 2.0:.3f}\t{h[i, j]:.6f}")
    path = tmp_path / "map.xyz"
    path.write_text("\n".join(lines) + "\n")
    m = read_stm_ascii(path)
    check_height_map(m, printed(h, ".6f"))
    assert m.pixel_size_yx_nm == pytest.approx((2.0, 2.5))
    assert m.height_unit == "nm"


def test_stm_through_read_image(tmp_path):
    h = bump(20, 24)
    path = write_matrix(tmp_path / "r.asc", ["X Amplitude: 24 nm", "Y Amplitude: 20 nm"], h)
    m = read_image(path, detect_info_bar=False, detect_scale_bar=False)
    assert m.pixel_size_nm == pytest.approx(1.0) and m.heights is not None


def test_heights_to_uint8_formula_and_flat():
    h = np.array([[0.0, 1.0], [2.0, 4.0]])
    np.testing.assert_array_equal(heights_to_uint8(h), [[0, 64], [128, 255]])
    assert heights_to_uint8(np.full((3, 3), 7.0)).max() == 0


def test_hitachi_sidecar_is_not_a_height_map(tmp_path):
    path = tmp_path / "S4800_001.txt"
    path.write_text("[SemImageFile]\nInstructName=S-4800\nImageName=S4800_001.tif\nPixelSize=4.96\n")
    err = assert_clean_error(path, reader=read_stm_ascii)
    assert "Hitachi" in str(err) and "S4800_001.tif" in str(err)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("ragged.txt", "1 2 3\n4 5 6\n7 8\n", "ragged"),
        ("garbage.txt", "hello world\nthis is not a matrix\n", "no numeric"),
        ("midtext.txt", "1 2 3\n4 5 6\n7 x 9\n", "line 3"),
        ("partnan.txt", "1 2 3\n4 NaN 6\n7 8 9\n", "1 missing"),
        ("allnan.txt", "nan nan\nnan nan\n", "no valid values"),
        ("blank.txt", "\n  \n\n", "no numeric"),
        ("onerow.txt", "1 2 3 4\n", "not an image"),
        ("declared.txt", "Number of rows: 5\nNumber of columns: 3\n1 2 3\n4 5 6\n", "declares 5 rows"),
        ("wsxmbin.stp", "WSxM file copyright UAM\nImage header size: 1234\n", "binary WSxM"),
    ],
)
def test_bad_height_maps(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_text(content)
    err = assert_clean_error(path, reader=read_stm_ascii)
    assert match in str(err)


def test_random_bytes_and_plane_for_stm(tmp_path):
    rng = np.random.default_rng(7)
    for i in range(20):
        path = tmp_path / f"rand{i}.dat"
        path.write_bytes(rng.integers(1 if i % 2 else 0, 256, 3000, dtype=np.uint8).tobytes())
        assert_clean_error(path, reader=read_stm_ascii)
    ok = write_matrix(tmp_path / "ok.txt", [], bump(5, 5))
    assert_clean_error(ok, reader=read_stm_ascii, plane=1)


def test_empty_file_through_read_image(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(NanodefectError, match="empty"):
        read_image(path, detect_info_bar=False, detect_scale_bar=False)
