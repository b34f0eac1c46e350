"""Gatan DigitalMicrograph (.dm3/.dm4) and JEOL .img readers.

Real files (../shared) are checked against the pixel sizes in their README and against
rosettasciio's readers; synthetic files written here by small writers check round trips
without ../shared; corrupt inputs must give NanodefectError naming the file.
"""

from __future__ import annotations

import json
import random
import struct
import tracemalloc

import numpy as np
import pytest
from conftest import real_file

from napari_nanodefect.core.errors import NanodefectError
from napari_nanodefect.core.io import read_image
from napari_nanodefect.core.io.dm import read_dm
from napari_nanodefect.core.io.jeol import read_jeol_img

DM3_UM = ("rosettasciio", "rsciio", "tests", "data", "tiff", "test_dm_image_um_unit.dm3")
DM4_HAADF = ("particlespy", "particlespy", "data", "JEOL HAADF Image.dm4")
JEOL_IMG = ("rosettasciio", "rsciio", "tests", "data", "jeol", "Sample", "00_View000", "View000_0000000.img")


# ------------------------------------------------------------------------------------------
# A minimal DigitalMicrograph writer (test only): dicts are named tag groups, lists are
# unnamed groups, str is a UTF-16 array, int int32, float float64, bool bool, ndarray array.
# ------------------------------------------------------------------------------------------
DM_ARRAY_TYPES = {"i2": 2, "i4": 3, "u2": 4, "u4": 5, "f4": 6, "f8": 7, "i1": 9, "u1": 10}
DM_IMAGE_TYPES = {"i2": 1, "f4": 2, "u1": 6, "i4": 7, "i1": 9, "u2": 10, "u4": 11, "f8": 12}


class _DMWriter:
    def __init__(self, version: int, endian: str):
        self.version = version
        self.endian = endian
        self.n = ">I" if version == 3 else ">Q"

    def data_body(self, info: list[int], payload: bytes) -> bytes:
        return b"%%%%" + struct.pack(self.n, len(info)) + b"".join(struct.pack(self.n, i) for i in info) + payload

    def value(self, v) -> tuple[int, bytes]:
        """(tag kind, body) of a value."""
        e = self.endian
        if isinstance(v, dict):
            return 20, self.group(list(v.items()))
        if isinstance(v, list):
            return 20, self.group([("", x) for x in v])
        if isinstance(v, bool):
            return 21, self.data_body([8], bytes([v]))
        if isinstance(v, int):
            return 21, self.data_body([3], struct.pack(e + "i", v))
        if isinstance(v, float):
            return 21, self.data_body([7], struct.pack(e + "d", v))
        if isinstance(v, str):
            units = np.frombuffer(v.encode("utf-16-le"), "<u2").astype(e + "u2")
            return 21, self.data_body([20, 4, units.size], units.tobytes())
        if isinstance(v, np.ndarray):
            code = DM_ARRAY_TYPES[v.dtype.str[1:]]
            return 21, self.data_body([20, code, v.size], v.astype(v.dtype.newbyteorder(e)).tobytes())
        raise TypeError(v)

    def group(self, items) -> bytes:
        body = b"\x00\x01" + struct.pack(self.n, len(items))
        for name, v in items:
            kind, content = self.value(v)
            raw = name.encode("latin-1")
            body += bytes([kind]) + struct.pack(">H", len(raw)) + raw
            if self.version == 4:
                body += struct.pack(">Q", len(content))
            body += content
        return body

    def file(self, root: dict) -> bytes:
        tree = self.group(list(root.items()))
        size = struct.pack(">I" if self.version == 3 else ">Q", len(tree))
        order = struct.pack(">I", 1 if self.endian == "<" else 0)
        return struct.pack(">I", self.version) + size + order + tree + b"\x00" * 8


def dm_image_entry(data: np.ndarray, scale=(1.0, 1.0), units=("", ""), data_type=None, tags=None, name="img") -> dict:
    """An ImageList entry; ``scale``/``units`` are (x, y); ``data`` has numpy (.., y, x) order."""
    if data_type is None:
        data_type = DM_IMAGE_TYPES[data.dtype.str[1:]]
    dims = [int(s) for s in reversed(data.shape)]
    cal = [{"Origin": 0.0, "Scale": float(s), "Units": u} for s, u in zip(scale, units)]
    cal += [{"Origin": 0.0, "Scale": 1.0, "Units": ""} for _ in dims[2:]]
    return {
        "ImageData": {
            "Calibrations": {
                "Brightness": {"Origin": 0.0, "Scale": 1.0, "Units": "counts"},
                "Dimension": cal,
                "DisplayCalibratedUnits": True,
            },
            "Data": np.ascontiguousarray(data).ravel(),
            "DataType": data_type,
            "Dimensions": dims,
            "PixelDepth": data.dtype.itemsize,
        },
        "ImageTags": tags or {},
        "Name": name,
    }


def write_dm(path, images: list[dict], version=3, endian="<", thumbnails=(0,)) -> bytes:
    root = {"ApplicationBounds": np.array([0, 0, 10, 10], "i4"), "ImageList": images}
    if thumbnails is not None:
        root["Thumbnails"] = [{"ImageIndex": i, "SourceSize_Pixels": np.array([1, 1], "i4")} for i in thumbnails]
    raw = _DMWriter(version, endian).file(root)
    path.write_bytes(raw)
    return raw


MICROSCOPE_TAGS = {
    "Microscope Info": {
        "Name": "Test TEM",
        "Voltage": 300000.0,
        "Indicated Magnification": 50000.0,
        "Emission Current (µA)": 1.5,
        "Operation Mode": "IMAGING",
    },
    "DataBar": {"Device Name": "TestCam", "Exposure Time (s)": 0.25},
}


def _thumbnail() -> np.ndarray:
    """An RGB thumbnail (DataType 23, 4 bytes per pixel), larger than the data, as DM writes."""
    return np.full((40, 40), 0xFF808080, dtype="u4")


def _synthetic_image(shape=(24, 32), dtype="f4", seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(100, 10, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -1000), min(info.max, 1000), shape, endpoint=True).astype(dtype)


@pytest.fixture(params=[(3, "<"), (4, "<"), (3, ">"), (4, ">")], ids=["dm3", "dm4", "dm3-bigendian", "dm4-bigendian"])
def dm_file(request, tmp_path):
    """A synthetic DM file: RGB thumbnail + 24x32 float32 image, 0.25 nm/px (x) and 0.5 nm/px (y)."""
    version, endian = request.param
    data = _synthetic_image()
    entries = [
        dm_image_entry(_thumbnail(), data_type=23, name="thumb"),
        dm_image_entry(data, scale=(0.25, 0.5), units=("nm", "nm"), tags=MICROSCOPE_TAGS, name="main"),
    ]
    path = tmp_path / f"synthetic.dm{version}"
    write_dm(path, entries, version=version, endian=endian)
    return path, data


# ------------------------------------------------------------------------------------------
# DM: synthetic round trips
# ------------------------------------------------------------------------------------------
def test_dm_synthetic_round_trip(dm_file):
    path, data = dm_file
    m = read_dm(path)
    assert m.data.dtype == np.float32 and m.shape == (24, 32)
    np.testing.assert_array_equal(m.data, data)
    assert m.pixel_size_nm == pytest.approx(0.25)
    assert m.pixel_size_yx_nm == pytest.approx((0.5, 0.25))
    assert m.pixel_size_source == "DigitalMicrograph calibration (ImageData/Calibrations)"
    assert m.vendor == "Gatan DigitalMicrograph"
    md = m.metadata
    assert md["image_name"] == "main" and md["image_index"] == 1
    assert md["dimensions"] == [32, 24] and md["data_type"] == 2
    assert md["calibrations"][0] == {"scale": 0.25, "origin": 0.0, "units": "nm"}
    assert md["intensity"]["units"] == "counts"
    assert md["microscope"] == "Test TEM"
    assert md["voltage_kV"] == pytest.approx(300.0)
    assert md["indicated_magnification"] == pytest.approx(50000.0)
    assert md["device"] == "TestCam" and md["exposure_s"] == pytest.approx(0.25)
    assert md["image_tags"]["Microscope Info:Emission Current (µA)"] == pytest.approx(1.5)
    json.dumps(m.info())  # JSON-friendly


def test_dm_synthetic_via_dispatcher(dm_file):
    path, data = dm_file
    m = read_image(path, detect_info_bar=False, detect_scale_bar=False)
    np.testing.assert_array_equal(m.data, data)
    assert m.pixel_size_nm == pytest.approx(0.25)


def test_dm_synthetic_matches_rosettasciio(dm_file):
    """Our test writer makes files rosettasciio reads the same way (so it writes valid DM)."""
    dm = pytest.importorskip("rsciio.digitalmicrograph")
    path, data = dm_file
    raw = path.read_bytes()
    if raw[3:4] == b"\x03" and raw[8:12] == b"\x00" * 4 or raw[3:4] == b"\x04" and raw[12:16] == b"\x00" * 4:
        pytest.skip("rosettasciio reads DM image data as little-endian whatever the header says")
    ref = dm.file_reader(str(path))[0]
    np.testing.assert_array_equal(ref["data"], data)
    assert ref["axes"][-1]["scale"] == pytest.approx(0.25)
    assert ref["axes"][-1]["units"] == "nm"


@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "u2", "i4", "u4", "f4", "f8"])
def test_dm_dtypes(tmp_path, version, dtype):
    data = _synthetic_image((5, 7), dtype, seed=3)
    path = tmp_path / f"t.dm{version}"
    write_dm(path, [dm_image_entry(data, scale=(2.0, 2.0), units=("nm", "nm"))], version=version, thumbnails=None)
    m = read_dm(path)
    expected = data.astype(np.float32) if dtype == "f8" else data
    assert m.dtype == expected.dtype
    np.testing.assert_array_equal(m.data, expected)


@pytest.mark.parametrize(
    ("units", "scale", "expected"),
    [
        ("µm", 0.002, 2.0),
        ("\u03bcm", 0.002, 2.0),
        ("nm", 0.7, 0.7),
        ("Å", 3.0, 0.3),
        ("\u212b", 3.0, 0.3),
        ("m", 1e-9, 1.0),
    ],
)
def test_dm_units_to_nm(tmp_path, units, scale, expected):
    path = tmp_path / "u.dm3"
    entry = dm_image_entry(_synthetic_image((4, 4)), scale=(scale, scale), units=(units, units))
    write_dm(path, [entry], thumbnails=None)
    assert read_dm(path).pixel_size_nm == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("units", ["", "1/nm", "pixels"])
def test_dm_uncalibrated_has_no_pixel_size(tmp_path, units):
    path = tmp_path / "u.dm4"
    write_dm(path, [dm_image_entry(_synthetic_image((4, 4)), scale=(0.1, 0.1), units=(units, units))], version=4)
    m = read_dm(path)
    assert m.pixel_size_nm is None and m.pixel_size_source is None
    assert m.metadata["calibrations"][0]["units"] == units


def test_dm_picks_largest_image_without_thumbnail_list(tmp_path):
    small, big = _synthetic_image((4, 4), seed=1), _synthetic_image((9, 11), seed=2)
    path = tmp_path / "two.dm3"
    entries = [dm_image_entry(small, name="a"), dm_image_entry(big, name="b"), dm_image_entry(small, name="c")]
    write_dm(path, entries, thumbnails=None)
    m = read_dm(path)
    np.testing.assert_array_equal(m.data, big)
    assert m.metadata["image_name"] == "b" and m.metadata["n_images"] == 3


def test_dm_thumbnail_only_is_still_read(tmp_path):
    """A file whose only image is listed as a thumbnail is read (better than nothing)."""
    path = tmp_path / "thumb.dm3"
    write_dm(path, [dm_image_entry(_thumbnail(), data_type=23)])
    m = read_dm(path)
    assert m.shape == (40, 40) and m.dtype == np.uint8
    assert (m.data == 0x80).all()


def test_dm_rgb_channel_order(tmp_path):
    """DataType 23 stores B, G, R, A bytes; a colour image becomes BT.601 luminance of R, G, B."""
    r, g, b = 200, 50, 10
    pixel = (0 << 24) | (r << 16) | (g << 8) | b  # little-endian bytes: B, G, R, A
    path = tmp_path / "rgb.dm4"
    write_dm(path, [dm_image_entry(np.full((6, 8), pixel, "u4"), data_type=23)], version=4, thumbnails=None)
    m = read_dm(path)
    assert m.shape == (6, 8) and m.dtype == np.float32
    assert m.data[0, 0] == pytest.approx(0.299 * r + 0.587 * g + 0.114 * b, abs=1e-3)


def test_dm_stack_planes(tmp_path):
    stack = _synthetic_image((3, 6, 5), "u2", seed=4)
    path = tmp_path / "stack.dm4"
    write_dm(path, [dm_image_entry(stack, scale=(1.5, 1.5), units=("nm", "nm"))], version=4, thumbnails=None)
    for plane in range(3):
        m = read_dm(path, plane=plane)
        np.testing.assert_array_equal(m.data, stack[plane])
        assert m.metadata["n_planes"] == 3
    assert m.pixel_size_nm == pytest.approx(1.5)
    with pytest.raises(NanodefectError, match="plane 3"):
        read_dm(path, plane=3)


@pytest.mark.parametrize("data_type", [3, 13, 27])
def test_dm_complex_refused(tmp_path, data_type):
    path = tmp_path / "fft.dm3"
    write_dm(path, [dm_image_entry(np.zeros((4, 8), "f4"), data_type=data_type)], thumbnails=None)
    with pytest.raises(NanodefectError, match="complex") as exc:
        read_dm(path)
    assert "fft.dm3" in str(exc.value)


def test_dm_dimension_mismatch(tmp_path):
    entry = dm_image_entry(np.zeros((4, 4), "f4"))
    entry["ImageData"]["Dimensions"] = [4, 5]
    path = tmp_path / "mismatch.dm3"
    write_dm(path, [entry], thumbnails=None)
    with pytest.raises(NanodefectError, match="size mismatch"):
        read_dm(path)


def test_dm_no_image(tmp_path):
    path = tmp_path / "empty.dm4"
    write_dm(path, [], version=4, thumbnails=None)
    with pytest.raises(NanodefectError, match="no image"):
        read_dm(path)


# ------------------------------------------------------------------------------------------
# DM: real files
# ------------------------------------------------------------------------------------------
def _rsciio_dm(path):
    dm = pytest.importorskip("rsciio.digitalmicrograph")
    return dm.file_reader(str(path))[0]


@pytest.mark.real
def test_dm3_real_um_units():
    path = real_file(*DM3_UM)
    m = read_dm(path)
    assert m.shape == (68, 68) and m.dtype == np.int32
    assert m.pixel_size_nm == pytest.approx(168.68, rel=0.01)
    assert m.pixel_size_nm == pytest.approx(0.16868 * 1000, rel=1e-4)
    assert m.metadata["calibrations"][0]["units"] == "µm"
    assert m.metadata["microscope"] == "FEI Tecnai"
    assert m.metadata["voltage_kV"] == pytest.approx(200.0)
    assert m.metadata["device"] == "BM-UltraScan"
    ref = _rsciio_dm(path)
    np.testing.assert_array_equal(m.data, ref["data"])
    assert m.pixel_size_nm == pytest.approx(ref["axes"][1]["scale"] * 1000, rel=1e-9)
    json.dumps(m.info())


@pytest.mark.real
def test_dm4_real_haadf():
    path = real_file(*DM4_HAADF)
    m = read_dm(path)
    assert m.shape == (112, 112) and m.dtype == np.float32
    assert m.pixel_size_nm == pytest.approx(1.249, rel=0.01)
    assert m.metadata["format"] == "DM4"
    assert m.metadata["illumination_mode"] == "STEM"
    assert m.metadata["voltage_kV"] == pytest.approx(80.0)
    assert m.metadata["indicated_magnification"] == pytest.approx(250000.0)
    ref = _rsciio_dm(path)
    np.testing.assert_array_equal(m.data, ref["data"])
    assert m.pixel_size_nm == pytest.approx(ref["axes"][1]["scale"] * 1000, rel=1e-9)
    json.dumps(m.info())


@pytest.mark.real
def test_dm_real_via_dispatcher():
    path = real_file(*DM4_HAADF)
    m = read_image(path, detect_info_bar=False, detect_scale_bar=False)
    assert m.vendor == "Gatan DigitalMicrograph"
    assert m.pixel_size_nm == pytest.approx(1.249, rel=0.01)


# ------------------------------------------------------------------------------------------
# DM: corrupt input
# ------------------------------------------------------------------------------------------
def _expect_clean_error(path, reader=read_dm):
    with pytest.raises(NanodefectError) as exc:
        reader(path)
    assert path.name in str(exc.value)
    return exc.value


def _cut_points(n: int) -> list[int]:
    """Offsets inside the header, the tag tree, the image data and the last tag."""
    points = {1, 3, 4, 7, 11, 12, 15, 16, 17, 20, 30, 64, 100}
    points |= {n // 4, n // 3, n // 2, 2 * n // 3, n - 200, n - 40, n - 9}
    return sorted(p for p in points if 0 < p < n - 8)


def test_dm_truncated_synthetic(dm_file, tmp_path):
    path, _ = dm_file
    raw = path.read_bytes()
    for cut in _cut_points(len(raw)):
        bad = tmp_path / f"cut{cut}{path.suffix}"
        bad.write_bytes(raw[:cut])
        _expect_clean_error(bad)


@pytest.mark.real
@pytest.mark.parametrize("parts", [DM3_UM, DM4_HAADF], ids=["dm3", "dm4"])
def test_dm_truncated_real(parts, tmp_path):
    raw = real_file(*parts).read_bytes()
    for cut in _cut_points(len(raw)):
        bad = tmp_path / f"cut{cut}.dm{raw[3]}"
        bad.write_bytes(raw[:cut])
        err = _expect_clean_error(bad)
        assert "truncated" in str(err) or "corrupt" in str(err)
    # through the dispatcher too
    bad = tmp_path / "half.dm4"
    bad.write_bytes(raw[: len(raw) // 2])
    _expect_clean_error(bad, lambda p: read_image(p, detect_info_bar=False, detect_scale_bar=False))


@pytest.mark.parametrize("head", [b"PK\x03\x04", b"\x00\x00\x00\x05", b"II*\x00", b"\x00\x00\x00\x03"])
def test_dm_wrong_magic_or_random(tmp_path, head):
    rng = random.Random(head)
    for i in range(40):
        bad = tmp_path / f"bad{i}.dm3"
        bad.write_bytes(head + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 400))))
        _expect_clean_error(bad)


def test_dm_random_bytes_with_valid_header(tmp_path):
    """Valid DM3/DM4 headers followed by noise: only NanodefectError, never anything else."""
    rng = random.Random(1)
    for i in range(200):
        version = 3 if i % 2 else 4
        header = struct.pack(">I", version) + (struct.pack(">I", 1000) if version == 3 else struct.pack(">Q", 1000))
        header += struct.pack(">I", 1) + b"\x00\x01"
        bad = tmp_path / f"noise{i}.dm{version}"
        bad.write_bytes(header + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 600))))
        _expect_clean_error(bad)


def test_dm_fuzzed_bytes(dm_file, tmp_path):
    """Random byte changes in a valid file: a Micrograph or a NanodefectError, nothing else."""
    path, _ = dm_file
    raw = bytearray(path.read_bytes())
    rng = random.Random(7)
    for i in range(150):
        bad_raw = bytearray(raw)
        for _ in range(rng.randint(1, 6)):
            bad_raw[rng.randrange(len(raw))] = rng.getrandbits(8)
        bad = tmp_path / f"fuzz{i}{path.suffix}"
        bad.write_bytes(bytes(bad_raw))
        try:
            read_dm(bad)
        except NanodefectError as exc:
            assert bad.name in str(exc)


def _huge_dm(version: int, what: str) -> bytes:
    """A DM file whose header claims absurd sizes."""
    w = _DMWriter(version, "<")
    n = ">I" if version == 3 else ">Q"
    big = 0xFFFFFFF0 if version == 3 else 2**62
    if what == "ntags":
        tree = b"\x00\x01" + struct.pack(n, big)
    elif what == "ninfo":
        tree = b"\x00\x01" + struct.pack(n, 1) + b"\x15" + struct.pack(">H", 4) + b"Data"
        tree += struct.pack(">Q", 0) if version == 4 else b""
        tree += b"%%%%" + struct.pack(n, big)
    else:  # array count
        tree = b"\x00\x01" + struct.pack(n, 1) + b"\x15" + struct.pack(">H", 4) + b"Data"
        tree += struct.pack(">Q", 0) if version == 4 else b""
        tree += w.data_body([20, 7, big // 8], b"\x00" * 64)
    return struct.pack(">I", version) + struct.pack(n, big) + struct.pack(">I", 1) + tree


@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize("what", ["ntags", "ninfo", "count"])
def test_dm_bogus_lengths_do_not_allocate(tmp_path, version, what):
    bad = tmp_path / f"huge_{what}.dm{version}"
    bad.write_bytes(_huge_dm(version, what))
    tracemalloc.start()
    try:
        _expect_clean_error(bad)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000


def test_dm_bogus_image_dimensions_do_not_allocate(tmp_path):
    entry = dm_image_entry(np.zeros((4, 4), "f4"))
    entry["ImageData"]["Dimensions"] = [2**30, 2**30]
    bad = tmp_path / "dims.dm4"
    write_dm(bad, [entry], version=4, thumbnails=None)
    tracemalloc.start()
    try:
        _expect_clean_error(bad)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000


def test_dm_deep_nesting(tmp_path):
    nested: dict = {"x": 1}
    for _ in range(200):
        nested = {"g": nested}
    bad = tmp_path / "deep.dm3"
    bad.write_bytes(_DMWriter(3, "<").file({"ImageList": [], "Deep": nested}))
    assert "deeper" in str(_expect_clean_error(bad))


def test_dm_missing_file(tmp_path):
    _expect_clean_error(tmp_path / "missing.dm3")


# ------------------------------------------------------------------------------------------
# JEOL .img: a minimal writer (test only)
# ------------------------------------------------------------------------------------------
JEOL_TYPES = {"u1": 6, "u2": 7, "i4": 3, "f4": 4, "f8": 5}


def _jeol_entry(name: str, value) -> bytes:
    """One entry with its closing byte; dict = group, str = text, else numbers."""
    raw = name.encode("ascii") + b"\x00"
    out = b"\x01" + struct.pack("<i", len(raw)) + raw
    if isinstance(value, dict):
        out += struct.pack("<ii", 0, 0) + b"".join(_jeol_entry(k, v) for k, v in value.items())
    elif isinstance(value, str):
        text = value.encode("ascii") + b"\x00"
        out += struct.pack("<ii", 12, len(text)) + text
    else:
        arr = np.atleast_1d(np.asarray(value))
        arr = arr.astype(arr.dtype.newbyteorder("<"))
        out += struct.pack("<ii", JEOL_TYPES[arr.dtype.str[1:]], arr.nbytes) + arr.tobytes()
    return out + b"\xff"


def write_jeol_img(path, data: np.ndarray, scan_size=100.0, mag=20000, accv=200.0) -> bytes:
    h, w = data.shape
    tree = {
        "Instrument": {
            "ScanSize": np.float32(scan_size),
            "Name": "JEM-TEST",
            "AccV": np.float32(accv),
            "Mag": np.int32(mag),
        },
        "FileType": "JED-2200:IMG",
        "Image": {
            "Created": np.float64(42831.75),
            "Title": "IMG1",
            "DataType": np.int32(1),
            "Size": np.array([w, h], "i4"),
            "Bits": data.ravel(),
        },
    }
    data_pos = 128
    pre = struct.pack("<I32sIII", 52, b"JED-2200:LibJxImageForm", 64, 10, data_pos)
    body = b"".join(_jeol_entry(k, v) for k, v in tree.items()) + b"\xff"
    raw = pre.ljust(data_pos + 12, b"\x00") + body
    path.write_bytes(raw)
    return raw


@pytest.mark.parametrize("dtype", ["u1", "u2"])
def test_jeol_synthetic_round_trip(tmp_path, dtype):
    data = _synthetic_image((20, 30), dtype, seed=5) % 250
    data = data.astype(dtype)
    path = tmp_path / "synthetic.img"
    write_jeol_img(path, data, scan_size=120.0, mag=30000)
    m = read_jeol_img(path)
    np.testing.assert_array_equal(m.data, data)
    assert m.dtype == np.dtype(dtype)
    assert m.pixel_size_nm == pytest.approx(120.0 / 30000 * 1e6 / 30)
    assert m.vendor == "JEOL"
    assert m.metadata["microscope"] == "JEM-TEST"
    assert m.metadata["voltage_kV"] == pytest.approx(200.0)
    assert m.metadata["magnification"] == 30000
    assert m.metadata["created"] == "2017-04-06T18:00:00"  # 42831.75 days after 1899-12-30
    json.dumps(m.info())
    m2 = read_image(path, detect_info_bar=False, detect_scale_bar=False)
    np.testing.assert_array_equal(m2.data, data)


def test_jeol_synthetic_matches_rosettasciio(tmp_path):
    jeol = pytest.importorskip("rsciio.jeol")
    data = _synthetic_image((16, 16), "u1", seed=6)
    path = tmp_path / "synthetic.img"
    write_jeol_img(path, data, scan_size=178.0, mag=40000)
    ref = jeol.file_reader(str(path))[0]
    np.testing.assert_array_equal(ref["data"], data)
    assert read_jeol_img(path).pixel_size_nm == pytest.approx(ref["axes"][1]["scale"] * 1000, rel=1e-6)


def test_jeol_no_magnification_has_no_pixel_size(tmp_path):
    path = tmp_path / "nomag.img"
    write_jeol_img(path, np.zeros((4, 4), "u1"), mag=0)
    m = read_jeol_img(path)
    assert m.pixel_size_nm is None and m.pixel_size_source is None


@pytest.mark.real
def test_jeol_real():
    path = real_file(*JEOL_IMG)
    m = read_jeol_img(path)
    assert m.shape == (512, 512) and m.dtype == np.uint8
    assert m.pixel_size_nm == pytest.approx(8.691, rel=0.01)
    assert m.metadata["microscope"] == "JEM-2100F(UHR)"
    assert m.metadata["voltage_kV"] == pytest.approx(200.0)
    assert m.metadata["magnification"] == 40000
    jeol = pytest.importorskip("rsciio.jeol")
    ref = jeol.file_reader(str(path))[0]
    np.testing.assert_array_equal(m.data, ref["data"])
    assert m.pixel_size_nm == pytest.approx(ref["axes"][1]["scale"] * 1000, rel=1e-9)
    json.dumps(m.info())
    m2 = read_image(path, detect_info_bar=False, detect_scale_bar=False)
    assert m2.vendor == "JEOL" and m2.pixel_size_nm == pytest.approx(m.pixel_size_nm)


def test_jeol_truncated(tmp_path):
    raw = write_jeol_img(tmp_path / "ok.img", _synthetic_image((10, 12), "u1"))
    for cut in _cut_points(len(raw)) + [len(raw) - 2]:
        bad = tmp_path / f"cut{cut}.img"
        bad.write_bytes(raw[:cut])
        _expect_clean_error(bad, read_jeol_img)


@pytest.mark.real
def test_jeol_truncated_real(tmp_path):
    raw = real_file(*JEOL_IMG).read_bytes()
    for cut in _cut_points(len(raw)):
        bad = tmp_path / f"cut{cut}.img"
        bad.write_bytes(raw[:cut])
        _expect_clean_error(bad, read_jeol_img)


def test_jeol_wrong_magic_and_noise(tmp_path):
    rng = random.Random(3)
    for i in range(100):
        head = struct.pack("<I", 52) if i % 2 else b"\x89PNG"
        bad = tmp_path / f"noise{i}.img"
        bad.write_bytes(head + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 500))))
        _expect_clean_error(bad, read_jeol_img)


def test_jeol_fuzzed_bytes(tmp_path):
    raw = bytearray(write_jeol_img(tmp_path / "ok.img", _synthetic_image((10, 12), "u1")))
    rng = random.Random(11)
    for i in range(150):
        bad_raw = bytearray(raw)
        for _ in range(rng.randint(1, 6)):
            bad_raw[rng.randrange(len(raw))] = rng.getrandbits(8)
        bad = tmp_path / f"fuzz{i}.img"
        bad.write_bytes(bytes(bad_raw))
        try:
            read_jeol_img(bad)
        except NanodefectError as exc:
            assert bad.name in str(exc)


def test_jeol_bogus_lengths_do_not_allocate(tmp_path):
    pre = struct.pack("<I32sIII", 52, b"JED-2200:LibJxImageForm", 0, 0, 64).ljust(76, b"\x00")
    entry = b"\x01" + struct.pack("<i", 5) + b"Bits\x00" + struct.pack("<ii", 6, 2**31 - 1) + b"\x00" * 32
    bad = tmp_path / "huge.img"
    bad.write_bytes(pre + entry)
    tracemalloc.start()
    try:
        _expect_clean_error(bad, read_jeol_img)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000
