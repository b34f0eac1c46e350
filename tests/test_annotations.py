"""Annotation model and interop: LabelMe, COCO, label images, conversion."""

from __future__ import annotations

import base64
import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.draw import disk, ellipse

from napari_nanodefect.core.annotations import (
    AnnotationSet,
    Crop,
    LineAnnotation,
    ObjectAnnotation,
    PointAnnotation,
    convert,
    keyhole,
    labels_to_objects,
    napari_to_xy,
    objects_to_labels,
    polygon_area,
    read_coco,
    read_label_tiff,
    read_labelme,
    read_labelme_folder,
    rings_to_mask,
    rle_decode,
    rle_encode,
    split_keyholes,
    trace_mask,
    write_coco,
    write_label_tiff,
    write_labelme,
    xy_to_napari,
)
from napari_nanodefect.core.annotations import geometry
from napari_nanodefect.core.errors import NanodefectError

from conftest import real_file

H, W = 64, 80

# pycocotools 2.0.x under numpy 2 warns on every decode; not our concern
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


# --------------------------------------------------------------------------- helpers


def _png(path: Path, shape=(H, W), mode="L") -> Path:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, shape, dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)
    return path


def _mask_b64(mask: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(bool)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _shape(label, points, shape_type="polygon", group_id=None, **kw):
    d = {"label": label, "points": points, "group_id": group_id, "description": "", "shape_type": shape_type,
         "flags": {}, "mask": None}
    d.update(kw)
    return d


MASK = np.zeros((6, 7), bool)
MASK[1:5, 1:6] = True
MASK[2, 3] = False  # a one-pixel hole
MASK[0, 0] = True  # a separate one-pixel piece (diagonal: not 4-connected)


def labelme_doc(image_name="img.png") -> dict:
    """A LabelMe file using every shape type we support."""
    return {
        "version": "5.5.0",
        "flags": {"good": True, "blurry": False},
        "shapes": [
            _shape("particle", [[10.25, 10.5], [20.75, 11.0], [18.0, 22.125], [9.5, 19.0]], group_id=1,
                   flags={"touching": True}, description="first"),
            _shape("particle", [[30, 30], [45.5, 31], [44, 50], [28, 47]], group_id=2),
            _shape("particle", [[35, 36], [39, 36], [39, 40], [35, 40]], group_id=2, description="hole"),
            _shape("void", [[50.5, 5.5], [60.5, 5.5], [55.5, 15.25]], score=0.75),
            _shape("crop", [[2, 3], [70, 60]], "rectangle"),
            _shape("box", [[60, 40], [52, 30]], "rectangle"),
            _shape("particle", [[65.5, 50.5], [65.5, 56.0]], "circle"),
            _shape("site", [[5.5, 55.5], [7.5, 55.5]], "circle"),
            _shape("dislocation", [[1, 1], [30.5, 8.25]], "line", width_px=2.5),
            _shape("dislocation", [[40, 58], [50, 60], [60, 58.5], [70, 62]], "linestrip"),
            _shape("vacancy", [[12.5, 40.5]], "point", my_key={"a": 1}),
            _shape("precipitate", [[20, 44], [26, 49]], "mask", mask=_mask_b64(MASK)),
        ],
        "imagePath": image_name,
        "imageData": None,
        "imageHeight": H,
        "imageWidth": W,
        "pixel_size_nm": 0.25,
        "custom_top": {"x": 1},
    }


def _write_doc(folder: Path, doc: dict, name="img.json") -> Path:
    p = folder / name
    p.write_text(json.dumps(doc))
    return p


def _ring_key(r):
    return tuple(np.round(np.asarray(r), 6).ravel().tolist())


def assert_same_objects(a: list[ObjectAnnotation], b: list[ObjectAnnotation], tol=1e-6):
    assert len(a) == len(b)
    for oa, ob in zip(a, b):
        assert oa.label == ob.label
        assert oa.polygon.shape == ob.polygon.shape
        np.testing.assert_allclose(oa.polygon, ob.polygon, atol=tol)
        assert sorted(map(_ring_key, oa.holes)) == sorted(map(_ring_key, ob.holes))


def assert_same_sets(a: AnnotationSet, b: AnnotationSet):
    assert_same_objects(a.objects, b.objects)
    assert [o.shape_type for o in a.objects] == [o.shape_type for o in b.objects]
    assert [o.instance_id for o in a.objects] == [o.instance_id for o in b.objects]
    assert [(c.label, c.bbox) for c in a.crops] == [(c.label, c.bbox) for c in b.crops]
    assert len(a.lines) == len(b.lines)
    for la, lb in zip(a.lines, b.lines):
        assert (la.label, la.width_px, la.shape_type) == (lb.label, lb.width_px, lb.shape_type)
        np.testing.assert_allclose(la.points, lb.points, atol=1e-6)
    assert [(p.label, p.x, p.y, p.radius) for p in a.points] == [(p.label, p.x, p.y, p.radius) for p in b.points]
    assert a.tags == b.tags
    assert a.pixel_size_nm == b.pixel_size_nm
    assert a.image_shape == b.image_shape


# --------------------------------------------------------------------------- LabelMe


def test_labelme_read_maps_every_shape_type(tmp_path):
    _png(tmp_path / "img.png")
    s = read_labelme(_write_doc(tmp_path, labelme_doc()))
    assert s.image_shape == (H, W) and s.pixel_size_nm == 0.25 and s.tags == ["good"]
    assert s.resolve_image_path() == (tmp_path / "img.png").resolve()
    assert [c.bbox for c in s.crops] == [(2.0, 3.0, 70.0, 60.0)]
    labels = [o.label for o in s.objects]
    # 3 polygons (one with a hole), a box, a circle, and the mask's 2 pieces
    assert labels == ["particle", "particle", "void", "box", "particle", "precipitate", "precipitate"]
    p0 = s.objects[0]
    np.testing.assert_array_equal(p0.polygon, [[10.25, 10.5], [20.75, 11.0], [18.0, 22.125], [9.5, 19.0]])
    assert p0.instance_id == 1 and p0.attributes == {"touching": True} and p0.description == "first"
    ring = s.objects[1]
    assert len(ring.holes) == 1 and ring.area == pytest.approx(polygon_area(ring.polygon) - 16)
    assert s.objects[2].score == 0.75
    box = s.objects[3]
    assert box.shape_type == "rectangle" and box.area == pytest.approx(80)
    circ = s.objects[4]
    assert circ.circle == (65.5, 50.5, 5.5) and circ.area == pytest.approx(np.pi * 5.5**2, rel=1e-9)
    # mask shape: exact pixel outlines placed at points[0]
    small, big = s.objects[5], s.objects[6]
    assert big.area == MASK.sum() - 1 and small.area == 1 and len(big.holes) == 1
    assert geometry.bounds([big.polygon]) == (21.0, 45.0, 26.0, 49.0)
    assert [ln.shape_type for ln in s.lines] == ["line", "linestrip"] and s.lines[0].width_px == 2.5
    assert [(p.label, p.x, p.y, p.radius) for p in s.points] == [("site", 5.5, 55.5, 2.0), ("vacancy", 12.5, 40.5, None)]
    assert s.points[1].extra == {"my_key": {"a": 1}}
    assert s.extra["labelme"]["custom_top"] == {"x": 1}


def test_labelme_roundtrip(tmp_path):
    _png(tmp_path / "img.png")
    a = read_labelme(_write_doc(tmp_path, labelme_doc()))
    out = write_labelme(a, tmp_path / "sub" / "copy.json")
    data = json.loads(out.read_text())
    assert data["imagePath"] == "../img.png"
    assert data["imageData"] is None  # an 8-bit PNG needs no embedding under "auto"
    assert data["flags"] == {"good": True, "blurry": False}
    assert data["custom_top"] == {"x": 1} and data["pixel_size_nm"] == 0.25
    types = [s["shape_type"] for s in data["shapes"]]
    assert sorted(types) == sorted(["rectangle", "polygon", "polygon", "polygon", "polygon", "rectangle", "circle",
                                    "mask", "mask", "line", "linestrip", "circle", "point"])
    b = read_labelme(out)
    assert b.resolve_image_path() == a.resolve_image_path()
    assert_same_sets(a, b)
    assert b.objects[0].attributes == {"touching": True} and b.objects[2].score == 0.75
    assert b.points[1].extra == {"my_key": {"a": 1}}
    # writing again gives the same JSON
    out2 = write_labelme(b, tmp_path / "sub" / "copy2.json")
    assert json.loads(out2.read_text())["shapes"] == data["shapes"]


def test_labelme_holes_as_mask(tmp_path):
    _png(tmp_path / "img.png")
    a = read_labelme(_write_doc(tmp_path, labelme_doc()))
    lab = read_labelme(write_labelme(a, tmp_path / "m.json", holes="mask"))
    ring_a = a.objects[1]
    ring_b = [o for o in lab.objects if o.shape_type == "mask" and o.label == "particle"][0]
    np.testing.assert_array_equal(ring_a.to_mask((H, W)), ring_b.to_mask((H, W)))


def test_embed_image_rules(tmp_path):
    doc = labelme_doc("img.tif")
    import tifffile

    img16 = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 7) + 100
    tifffile.imwrite(tmp_path / "img.tif", img16)
    s = read_labelme(_write_doc(tmp_path, doc))
    d = json.loads(write_labelme(s, tmp_path / "out.json").read_text())
    im = Image.open(io.BytesIO(base64.b64decode(d["imageData"])))
    assert im.format == "PNG" and im.mode == "L" and im.size == (W, H)
    px = np.asarray(im)
    assert px.min() == 0 and px.max() == 255  # stretched min..max
    assert px[0, 0] < px[-1, -1]
    # a PNG made beforehand (predict encodes it in a thread) is used as is: same file
    from napari_nanodefect.core.annotations._image import png8_bytes

    before = (tmp_path / "out.json").read_bytes()
    pre = png8_bytes(tmp_path / "img.tif")
    assert write_labelme(s, tmp_path / "out.json", png=pre).read_bytes() == before
    marker = (b"not-a-png", (H, W))  # proves it is taken, not recomputed
    d = json.loads(write_labelme(s, tmp_path / "out.json", png=marker).read_text())
    assert base64.b64decode(d["imageData"]) == b"not-a-png"
    d = json.loads(write_labelme(s, tmp_path / "out.json", embed_image=False).read_text())
    assert d["imageData"] is None
    # palette TIFF -> RGB PNG with the palette colours
    pal = Image.fromarray(np.tile(np.arange(W, dtype=np.uint8) % 4, (H, 1)), mode="P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9] + [0] * (256 * 3 - 12))
    pal.save(tmp_path / "pal.tif")
    s.image_path = "pal.tif"
    d = json.loads(write_labelme(s, tmp_path / "out.json").read_text())
    rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(d["imageData"]))))
    assert rgb.shape == (H, W, 3) and tuple(rgb[0, 0]) == (255, 0, 0) and tuple(rgb[0, 2]) == (0, 0, 255)
    # embed_image=True on an 8-bit PNG embeds the file bytes unchanged
    _png(tmp_path / "img.png")
    s.image_path = "img.png"
    d = json.loads(write_labelme(s, tmp_path / "out.json", embed_image=True).read_text())
    assert base64.b64decode(d["imageData"]) == (tmp_path / "img.png").read_bytes()
    # embedded data survives when the image file is gone
    (tmp_path / "img.png").unlink()
    s2 = read_labelme(tmp_path / "out.json")
    assert s2.image_data is not None
    d = json.loads(write_labelme(s2, tmp_path / "again.json").read_text())
    assert base64.b64decode(d["imageData"]) == s2.image_data


def test_labelme_folder(tmp_path):
    _png(tmp_path / "img.png")
    _write_doc(tmp_path, labelme_doc(), "a.json")
    _write_doc(tmp_path, labelme_doc(), "b.json")
    (tmp_path / "coco.json").write_text(json.dumps({"images": [], "annotations": []}))
    sets = read_labelme_folder(tmp_path)
    assert [s.source.name for s in sets] == ["a.json", "b.json"]


# --------------------------------------------------------------------------- COCO


def test_labelme_coco_labelme_keeps_polygons(tmp_path):
    _png(tmp_path / "img.png")
    a = read_labelme(_write_doc(tmp_path, labelme_doc()))
    cpath = write_coco([a], tmp_path / "coco" / "ann.json")
    coco = json.loads(cpath.read_text())
    assert coco["images"][0]["file_name"] == "../img.png"
    assert coco["images"][0]["pixel_size_nm"] == 0.25
    assert {c["name"] for c in coco["categories"]} == {"particle", "void", "box", "precipitate", "site",
                                                       "dislocation", "vacancy"}
    # the two mask pieces share no group id -> two annotations; lines and points are annotations too
    assert len(coco["annotations"]) == 7 + 2 + 2
    (b,) = read_coco(cpath)
    assert b.resolve_image_path() == (tmp_path / "img.png").resolve()
    assert_same_sets(a, b)
    c = read_labelme(write_labelme(b, tmp_path / "back" / "img.json"))
    assert_same_sets(a, c)
    assert c.objects[4].circle == a.objects[4].circle


def test_coco_area_bbox_and_multi_image(tmp_path):
    s1 = AnnotationSet(image_path="a.png", image_height=40, image_width=50, pixel_size_nm=1.5)
    s1.objects.append(ObjectAnnotation("p", [[10, 10], [20, 10], [20, 30], [10, 30]]))
    s1.objects.append(ObjectAnnotation("p", [[0, 0], [30, 0], [30, 20], [0, 20]], holes=[[[5, 5], [5, 15], [15, 15], [15, 5]]]))
    s2 = AnnotationSet(image_path="b.png", image_height=30, image_width=30)
    s2.objects.append(ObjectAnnotation("q", [[1.5, 2.5], [11.5, 2.5], [6.5, 12.5]], instance_id=4))
    s2.objects.append(ObjectAnnotation("q", [[20, 20], [25, 20], [25, 25]], instance_id=4))
    s2.crops.append(Crop(0, 0, 30, 30, label="roi"))
    s2.tags.append("dense")
    path = write_coco([s1, s2], tmp_path / "c.json")
    d = json.loads(path.read_text())
    assert [im["id"] for im in d["images"]] == [1, 2]
    anns = d["annotations"]
    assert len(anns) == 3  # the two instance-4 parts are one annotation with two polygons
    assert anns[0]["area"] == 200 and anns[0]["bbox"] == [10, 10, 10, 20]
    assert anns[1]["area"] == 600 - 100 and anns[1]["bbox"] == [0, 0, 30, 20]
    assert len(anns[2]["segmentation"]) == 2 and anns[2]["bbox"] == [1.5, 2.5, 23.5, 22.5]
    back = read_coco(path)
    assert back[1].crops[0].bbox == (0, 0, 30, 30) and back[1].tags == ["dense"]
    assert [o.instance_id for o in back[1].objects] == [4, 4]
    assert len(back[0].objects[1].holes) == 1 and back[0].objects[1].area == 500


def _sample_set() -> AnnotationSet:
    """Objects of many sizes: disks r 3..30, ellipses, shapes with holes, lines, points."""
    s = AnnotationSet(image_path="x.png", image_height=200, image_width=260)
    x = 8.0
    for r in (3, 4, 5, 7.5, 10, 15, 20, 30):
        s.objects.append(ObjectAnnotation.from_circle("disk", x + r, 40.3 + r, r))
        x += 2 * r + 3
    lab = np.zeros((200, 260), np.int32)
    rr, cc = ellipse(130, 40, 6, 14, rotation=0.5, shape=lab.shape)
    lab[rr, cc] = 1
    rr, cc = ellipse(140, 100, 20, 9, rotation=-0.3, shape=lab.shape)
    lab[rr, cc] = 2
    rr, cc = disk((150, 180), 18)
    lab[rr, cc] = 3
    rr, cc = disk((150, 180), 7)
    lab[rr, cc] = 0  # a ring
    rr, cc = disk((150, 230), 12)
    lab[rr, cc] = 4
    lab[147:152, 226:229] = 0  # a square hole
    lab[150:154, 231:233] = 0  # a second hole
    s.objects += labels_to_objects(lab, classes={1: "ellipse", 2: "ellipse", 3: "ring", 4: "holey"})
    s.lines.append(LineAnnotation("line", [[10, 180], [60, 170], [90, 190]], width_px=4))
    s.points.append(PointAnnotation("pt", 120.5, 180.5, radius=6))
    s.points.append(PointAnnotation("pt", 140.5, 180.5))
    return s


def test_pycocotools_reads_our_coco(tmp_path):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO

    s = _sample_set()
    path = write_coco([s], tmp_path / "c.json")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) == len(s.objects) + len(s.lines) + len(s.points)
    ours = [*s.objects, *[None] * (len(s.lines) + len(s.points))]
    for ann, obj in zip(anns, ours):
        m = coco.annToMask(ann).astype(bool)
        assert m.shape == (200, 260)
        assert m.sum() == pytest.approx(ann["area"], rel=0.01)
        if obj is not None:
            mine = obj.to_mask((200, 260))
            assert np.array_equal(m, mine)
            if obj.holes or obj.shape_type == "polygon":  # traced outlines: exact pixel count
                assert obj.area == pytest.approx(m.sum(), rel=0.01)
            if obj.circle is not None:  # pixel count of a disk: within a few px of pi r^2
                r = obj.circle[2]
                assert abs(m.sum() - np.pi * r**2) <= 2 + 0.1 * 2 * np.pi * r
    # holes really are holes for pycocotools (keyhole polygons)
    ring = [a for a in anns if coco.cats[a["category_id"]]["name"] == "ring"][0]
    assert coco.annToMask(ring)[150, 180] == 0 and coco.annToMask(ring)[150, 165] == 1


def test_rle_decode_matches_pycocotools_and_rle_input(tmp_path):
    mu = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(3)
    for _ in range(30):
        m = rng.random((int(rng.integers(1, 50)), int(rng.integers(1, 50)))) < rng.random()
        r = mu.encode(np.asfortranarray(m.astype(np.uint8)))
        compressed = {"size": r["size"], "counts": r["counts"].decode()}
        assert np.array_equal(rle_decode(compressed), mu.decode(r).astype(bool))
        assert rle_encode(m) == compressed
        unc = rle_encode(m, compressed=False)
        assert np.array_equal(rle_decode(unc), mu.decode(mu.frPyObjects(unc, *m.shape)).astype(bool))
    # a COCO file with compressed and uncompressed RLE (iscrowd) annotations
    lab = np.zeros((50, 60), bool)
    rr, cc = disk((20, 25), 9)
    lab[rr, cc] = True
    lab[18:21, 23:26] = False
    crowd = np.zeros((50, 60), bool)
    crowd[40:45, 5:50] = True
    crowd[40:45, 20] = False
    doc = {
        "images": [{"id": 7, "file_name": "a.png", "height": 50, "width": 60}],
        "categories": [{"id": 3, "name": "p"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "iscrowd": 0, "segmentation": rle_encode(lab)},
            {"id": 2, "image_id": 7, "category_id": 3, "iscrowd": 1,
             "segmentation": rle_encode(crowd, compressed=False)},
        ],
    }
    (tmp_path / "rle.json").write_text(json.dumps(doc))
    (s,) = read_coco(tmp_path / "rle.json")
    assert len(s.objects) == 3  # the disk with a hole; the crowd region in two pieces
    assert len(s.objects[0].holes) == 1 and s.objects[0].area == lab.sum()
    assert s.objects[1].attributes == {"iscrowd": 1} and s.objects[1].instance_id == 2
    assert np.array_equal(s.objects[0].to_mask((50, 60)), lab)
    assert np.array_equal(s.objects[1].to_mask((50, 60)) | s.objects[2].to_mask((50, 60)), crowd)
    # written back as polygons, pycocotools sees the same pixels
    out = write_coco([s], tmp_path / "poly.json")
    d = json.loads(out.read_text())
    assert all(isinstance(a["segmentation"], list) for a in d["annotations"])
    assert d["annotations"][1]["iscrowd"] == 1 and d["images"][0]["id"] == 7
    m0 = mu.decode(mu.frPyObjects(d["annotations"][0]["segmentation"], 50, 60)).max(axis=2)
    assert np.array_equal(m0.astype(bool), lab)


def test_real_creme_coco(tmp_path):
    path = real_file("creme", "data", "ds25s", "fov200nm", "clean.json")
    sets = read_coco(path)
    assert len(sets) == 16
    assert sum(len(s.objects) for s in sets) == 186
    assert {o.label for s in sets for o in s.objects} == {"hcloop"}
    assert all(s.image_shape == (512, 512) for s in sets)
    assert sets[0].resolve_image_path().resolve() == (path.parent / "imgs" / "1.png").resolve()
    assert all(s.resolve_image_path().is_file() for s in sets)
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    ious = []
    for s in sets:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[s.extra["coco_image"]["id"]]))
        assert len(anns) == len(s.objects)
        for ann, obj in zip(anns, s.objects):
            ref = coco.annToMask(ann).astype(bool)
            mine = obj.to_mask(s.image_shape)
            ious.append((ref & mine).sum() / (ref | mine).sum())
    assert min(ious) > 0.98
    # and through LabelMe and back the vertices survive
    out = convert(path, "labelme", tmp_path / "lm")
    assert len(out) == 16
    back = read_labelme_folder(tmp_path / "lm")
    by_name = {Path(s.image_path).name: s for s in back}
    for s in sets:
        assert_same_objects(s.objects, by_name[Path(s.image_path).name].objects)


# --------------------------------------------------------------------------- label images


@pytest.mark.parametrize("r", [3, 3.5, 4, 5, 6, 8, 10, 15, 20, 30])
def test_disk_labels_roundtrip_area(r):
    lab = np.zeros((70, 70), np.uint16)
    rr, cc = disk((34.3, 35.6), r)
    lab[rr, cc] = 5
    (obj,) = labels_to_objects(lab)
    assert obj.instance_id == 5
    assert obj.area == pytest.approx((lab > 0).sum(), rel=0.01)
    assert obj.area == (lab > 0).sum()  # traced outlines are exact
    back = objects_to_labels([obj], lab.shape)
    assert np.array_equal(back.labels, lab)


def test_ellipses_and_holes_labels_roundtrip():
    lab = np.zeros((120, 160), np.int32)
    for i, (cy, cx, a, b, rot) in enumerate([(20, 20, 4, 9, 0.3), (60, 30, 12, 5, 1.1), (30, 80, 15, 25, -0.4)], 1):
        rr, cc = ellipse(cy, cx, a, b, rotation=rot, shape=lab.shape)
        lab[rr, cc] = i
    rr, cc = disk((90, 110), 20)
    lab[rr, cc] = 9
    rr, cc = disk((90, 110), 8)
    lab[rr, cc] = 0
    lab[80:83, 120:123] = 0
    lab[100, 100] = 0
    objs = labels_to_objects(lab, classes={9: "ring"})
    assert [o.instance_id for o in objs] == [1, 2, 3, 9]
    assert objs[-1].label == "ring" and len(objs[-1].holes) == 3 and objs[0].label == "object"
    for o in objs:
        assert o.area == (lab == o.instance_id).sum()
    back = objects_to_labels(objs, lab.shape)
    assert back.labels.dtype == np.uint16
    assert np.array_equal(back.labels, lab)
    assert back.classes == {1: "object", 2: "object", 3: "object", 9: "ring"}
    cmap, ids = back.class_map()
    assert ids == {"object": 1, "ring": 2} and cmap[90, 125] == 2 and cmap[20, 20] == 1 and cmap[0, 0] == 0


def test_split_labels_and_diagonal_pixels():
    lab = np.zeros((10, 10), np.uint8)
    lab[1:3, 1:3] = 1
    lab[5:7, 5:7] = 1  # a second piece of label 1
    lab[3, 3] = 2
    lab[4, 4] = 2  # diagonal neighbours -> separate 4-connected pieces
    objs = labels_to_objects(lab)
    assert [o.instance_id for o in objs] == [1, 1, 2, 2]
    assert np.array_equal(objects_to_labels(objs, lab.shape).labels, lab)


def test_overlap_later_object_wins_and_values():
    a = ObjectAnnotation("a", geometry.rectangle_ring(0, 0, 6, 6))
    b = ObjectAnnotation("b", geometry.rectangle_ring(3, 3, 9, 9), instance_id=70000)
    li = objects_to_labels([a, b], (10, 10))
    assert li.labels.dtype == np.uint32
    assert li.labels[4, 4] == 70000 and li.labels[1, 1] == 70001 and li.labels[8, 8] == 70000
    assert (li.labels == 70001).sum() == 36 - 9
    li = objects_to_labels([b, a], (10, 10))
    assert li.labels[4, 4] == 70001


def test_label_tiff_io(tmp_path):
    lab = np.zeros((30, 40), np.uint16)
    lab[2:8, 3:9] = 1
    lab[10:20, 10:30] = 2
    p = write_label_tiff(tmp_path / "a_labels.tif", lab, classes={1: "void", 2: "particle"}, pixel_size_nm=0.5,
                         image_path="a.png")
    li = read_label_tiff(p)
    assert li.labels.dtype == np.uint16 and np.array_equal(li.labels, lab)
    assert li.classes == {1: "void", 2: "particle"} and li.pixel_size_nm == 0.5 and li.image_path == "a.png"
    big = lab.astype(np.uint32)
    big[big == 2] = 100000
    li = read_label_tiff(write_label_tiff(tmp_path / "b_labels.tif", big))
    assert li.labels.dtype == np.uint32 and li.labels.max() == 100000


# --------------------------------------------------------------------------- convert


def test_convert_all_directions(tmp_path):
    _png(tmp_path / "img.png")
    _png(tmp_path / "img2.png")
    src = tmp_path / "lm"
    src.mkdir()
    doc = labelme_doc("../img.png")
    _write_doc(src, doc, "img.json")
    doc2 = labelme_doc("../img2.png")
    doc2["shapes"] = doc2["shapes"][:4]
    _write_doc(src, doc2, "img2.json")

    (coco_path,) = convert(src, "coco", tmp_path / "out" / "coco.json", images=tmp_path)
    d = json.loads(coco_path.read_text())
    assert [im["file_name"] for im in d["images"]] == ["img.png", "img2.png"]
    sets = read_coco(coco_path, images=tmp_path)
    assert [s.resolve_image_path() for s in sets] == [(tmp_path / "img.png").resolve(), (tmp_path / "img2.png").resolve()]

    lm = convert(coco_path, "labelme", tmp_path / "lm_out", images=tmp_path)
    assert [p.name for p in lm] == ["img.json", "img2.json"]
    assert json.loads(lm[0].read_text())["imagePath"] == "../img.png"
    assert_same_sets(read_labelme(src / "img.json"), read_labelme(lm[0]))

    with pytest.warns(UserWarning, match="not written to label images"):
        tifs = convert(src, "labels", tmp_path / "labels")
    assert [p.name for p in tifs] == ["img_labels.tif", "img2_labels.tif"]
    li = read_label_tiff(tifs[1])
    assert li.labels.shape == (H, W) and set(li.classes.values()) == {"particle", "void"}
    ref = read_labelme(src / "img2.json")
    expected = objects_to_labels(ref.objects, (H, W))
    assert np.array_equal(li.labels, expected.labels)

    (c2,) = convert(tmp_path / "labels", "coco", tmp_path / "from_labels.json")
    sets = {Path(s.image_path).name: s for s in read_coco(c2)}  # (sorted by label file name)
    assert sorted(sets) == ["img.png", "img2.png"]
    assert sets["img2.png"].resolve_image_path() == (tmp_path / "img2.png").resolve()
    assert np.array_equal(objects_to_labels(sets["img2.png"].objects, (H, W)).labels, li.labels)

    lm2 = convert(tifs[1], "labelme", tmp_path / "lm2")
    s = read_labelme(lm2[0])
    assert s.resolve_image_path() == (tmp_path / "img2.png").resolve()
    assert np.array_equal(objects_to_labels(s.objects, (H, W)).labels, li.labels)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "neither LabelMe"),
        ('{"foo": 1}', "neither LabelMe"),
        ('{"shapes": [{"label": "a", "points": [[1, 2], [3, 4]], "shape_type": "polygon"}]}', "at least 3 points"),
        ('{"shapes": [{"label": "a", "points": [[1, "x"], [3, 4], [5, 5]]}]}', "shape 0"),
        ('{"shapes": [{"points": [[1, 2], [3, 4], [5, 5]]}]}', "missing key 'label'"),
        ('{"shapes": [{"label": "a", "points": [[1, 2], [1, 2]], "shape_type": "circle"}]}', "radius 0"),
        ('{"shapes": [{"label": "a", "points": [[1, 2]], "shape_type": "blob"}]}', "unsupported shape_type"),
        ('{"shapes": [{"label": "a", "points": [[0, 0]], "shape_type": "mask", "mask": "!!"}]}', "base64"),
        ('{"shapes": [], "imageHeight": -3}', "imageHeight"),
        ('{"images": [{"id": 1}], "annotations": [{"image_id": 2, "category_id": 1, "segmentation": [[0,0,1,0,1,1]]}]}',
         "not in 'images'"),
        ('{"images": [{"id": 1}], "annotations": [{"image_id": 1, "segmentation": [[0,0,1,0,1,1]]}]}',
         "missing key 'category_id'"),
        ('{"images": [{"id": 1}], "annotations": [{"image_id": 1, "category_id": 1, "segmentation": [[0,0,1,0,1]]}]}',
         "even number"),
        ('{"images": [{"id": 1}], "annotations": [{"image_id": 1, "category_id": 1, '
         '"segmentation": {"size": [4, 4], "counts": [3, 2]}}]}', "sum to 5"),
        ('{"images": [{"id": 1}], "annotations": [{"image_id": 1, "category_id": 1, '
         '"segmentation": {"size": [4, 4], "counts": "\\u00ff"}}]}', "invalid character"),
    ],
)
def test_bad_json_raises_nanodefect_error(tmp_path, content, message):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(NanodefectError, match=message) as ei:
        convert(p, "coco", tmp_path / "o.json")
    assert "bad.json" in str(ei.value)


def test_other_bad_inputs(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "empty_labels.tif", np.zeros((5, 5), np.uint16))
    with pytest.raises(NanodefectError, match="empty"):
        convert(tmp_path / "empty_labels.tif", "coco", tmp_path / "o.json")
    tifffile.imwrite(tmp_path / "f_labels.tif", np.full((5, 5), 0.5, np.float32))
    with pytest.raises(NanodefectError, match="integers"):
        convert(tmp_path / "f_labels.tif", "labelme", tmp_path / "o")
    tifffile.imwrite(tmp_path / "c_labels.tif", np.ones((2, 5, 5), np.uint16))
    with pytest.raises(NanodefectError, match="2-D"):
        convert(tmp_path / "c_labels.tif", "labelme", tmp_path / "o")
    with pytest.raises(NanodefectError, match="not found"):
        convert(tmp_path / "missing.json", "coco", tmp_path / "o.json")
    (tmp_path / "a.json").write_text('{"shapes": []}')
    with pytest.raises(NanodefectError, match="unknown target"):
        convert(tmp_path / "a.json", "yolo", tmp_path / "o")
    # labels need the image size: a LabelMe file without size or image
    with pytest.raises(NanodefectError, match="image size unknown"):
        convert(tmp_path / "a.json", "labels", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NanodefectError, match="no LabelMe"):
        convert(tmp_path / "empty", "coco", tmp_path / "o.json")
    with pytest.raises(NanodefectError, match="unsupported annotation file type"):
        convert(_png(tmp_path / "x.png"), "coco", tmp_path / "o.json")


# --------------------------------------------------------------------------- geometry


def test_keyhole_split_roundtrip_and_napari_helpers():
    outer = geometry.circle_polygon(20, 20, 15)
    holes = [geometry.rectangle_ring(12, 12, 16, 18)[::-1], geometry.circle_polygon(25, 24, 3)[::-1]]
    k = keyhole(outer, holes)
    o2, h2 = split_keyholes(k)
    np.testing.assert_array_equal(o2, outer)
    assert sorted(map(_ring_key, h2)) == sorted(map(_ring_key, holes))
    assert np.array_equal(rings_to_mask([k], (40, 40)), rings_to_mask([outer, *holes], (40, 40)))
    # an ordinary polygon is not split
    poly = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    o3, h3 = split_keyholes(poly)
    assert h3 == [] and np.array_equal(o3, poly)
    # napari: pixel centres at integer (row, col)
    xy = np.array([[0.5, 0.5], [10.5, 3.5]])
    np.testing.assert_array_equal(xy_to_napari(xy), [[0, 0], [3, 10]])
    np.testing.assert_array_equal(napari_to_xy(xy_to_napari(xy)), xy)


def test_rasterize_pixel_centre_rule():
    # a square from 2 to 6 covers pixels 2..5 exactly (corner convention)
    m = rings_to_mask([geometry.rectangle_ring(2, 2, 6, 6)], (8, 8))
    assert m.sum() == 16 and m[2:6, 2:6].all()
    # a one-pixel square around the centre of pixel (row 3, col 1)
    m = rings_to_mask([geometry.rectangle_ring(1, 3, 2, 4)], (8, 8))
    assert np.argwhere(m).tolist() == [[3, 1]]
    # outside the image: nothing, no error
    assert not rings_to_mask([geometry.rectangle_ring(20, 20, 30, 30)], (8, 8)).any()
    t = trace_mask(np.pad(np.ones((1, 1), bool), 2))
    assert t[0][0].tolist() == [[2, 2], [3, 2], [3, 3], [2, 3]]


# --------------------------------------------------------------------------- properties

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402


@settings(max_examples=50, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 24), st.integers(1, 24)), elements=st.integers(0, 4)))
def test_property_labels_roundtrip(lab):
    objs = labels_to_objects(lab)
    assert sum(o.area for o in objs) == np.count_nonzero(lab)
    back = objects_to_labels(objs, lab.shape)
    assert np.array_equal(back.labels, lab)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(-5, 45, allow_nan=False), st.floats(-5, 45, allow_nan=False)), min_size=3,
                max_size=12))
def test_property_random_polygons(pts):
    poly = np.array(pts, float)
    m = rings_to_mask([poly], (40, 40))
    try:
        from pycocotools import mask as mu
    except ImportError:
        mu = None
    if mu is not None:
        ref = mu.decode(mu.frPyObjects([poly.ravel().tolist()], 40, 40))[:, :, 0].astype(bool)
        assert np.array_equal(m, ref)
    # the traced outline of the mask gives the mask back, with area == pixel count
    objs = labels_to_objects(m.astype(np.uint8))
    assert sum(o.area for o in objs) == m.sum()
    acc = np.zeros_like(m)
    for o in objs:
        acc |= o.to_mask(m.shape)
    assert np.array_equal(acc, m)
    # through LabelMe / COCO dicts the polygon survives unchanged
    s = AnnotationSet(image_height=40, image_width=40)
    s.objects.append(ObjectAnnotation("p", poly))
    from napari_nanodefect.core.annotations.coco import sets_to_coco_dict
    from napari_nanodefect.core.annotations.labelme import labelme_dict_to_set, set_to_labelme_dict

    lm = labelme_dict_to_set(set_to_labelme_dict(s, "x.json", embed_image=False))
    np.testing.assert_allclose(lm.objects[0].polygon, geometry.as_ring(poly), atol=1e-9)
    seg = sets_to_coco_dict([s], "c.json")["annotations"][0]["segmentation"][0]
    np.testing.assert_allclose(np.reshape(seg, (-1, 2)), geometry.as_ring(poly), atol=1e-9)
