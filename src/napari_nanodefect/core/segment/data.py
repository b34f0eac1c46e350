"""Training data from annotations: regions around crops, targets, sampling, augmentation.

Crops (rectangles labelled ``crop``/``roi``) are fully annotated: inside them every
unlabelled pixel is background. Outside every crop nothing is known, so those pixels
carry no loss (``valid`` = 0). A set with no crop is annotated over the whole image.

Each crop becomes a *region*: the crop plus a margin, rescaled by the set's scale factor
so that objects appear at about ``object_diameter_px`` pixels. Targets per region:
``fg`` (object or not), ``dist`` (distance to the object's border divided by its
largest value in that object: 1 at the centre, 0 at the edge), ``cls`` (class index of
object pixels, -1 elsewhere) and ``valid``. A deterministic ~20 % of each region's
annotated area (whole cells of a grid) is held out for validation.
"""

from __future__ import annotations

import math
from typing import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..annotations import AnnotationSet, objects_to_labels
from ..errors import NanodefectError
from .background import Background
from .predict import flat_range, normalise, robust_range


@dataclass
class Region:
    image: np.ndarray  #: float32 normalised image
    fg: np.ndarray  #: float32 0/1
    dist: np.ndarray  #: float32 0..1
    cls: np.ndarray  #: int64 class index, -1 = not an object
    train: np.ndarray  #: bool: annotated and used for training
    val: np.ndarray  #: bool: annotated and held out for validation
    labels: np.ndarray  #: int32 instance labels (for validation F1)
    name: str = ""


def normalised_distance(labels: np.ndarray) -> np.ndarray:
    """Per object: Euclidean distance to its border / the object's maximum (0..1]."""
    out = np.zeros(labels.shape, np.float32)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        m = labels[sl] == i
        d = ndi.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
        mx = d.max()
        if mx > 0:
            out[sl][m] = (d[m] / mx).astype(np.float32)
    return out


def median_diameter_px(aset: AnnotationSet) -> float | None:
    areas = np.array([o.area for o in aset.objects], float)
    areas = areas[areas > 0]
    if areas.size == 0:
        return None
    return float(np.median(2 * np.sqrt(areas / np.pi)))


def _resize(a: np.ndarray, shape: tuple[int, int], mode: str) -> np.ndarray:
    if a.shape == shape:
        return a
    t = torch.from_numpy(np.ascontiguousarray(a))[None, None].float()
    kw = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(t, size=shape, mode=mode, **kw)[0, 0].numpy()


def build_regions(
    aset: AnnotationSet,
    image: np.ndarray,
    class_ids: dict[str, int],
    scale: float,
    margin_px: int = 32,
    val_fraction: float = 0.2,
    cell_px: int = 64,
    seed: int = 0,
    background: Background | None = None,
) -> list[Region]:
    """Regions (one per crop, or the whole image) of one annotated image, rescaled by ``scale``.
    ``background``: the support field to subtract first (core.segment.background)."""
    H, W = image.shape
    lo, hi = flat_range(image, background)
    if background is not None:
        image = background.subtract(image)
    li = objects_to_labels(aset.objects, (H, W))
    inst = li.labels.astype(np.int32)
    obj_cls = np.full(int(inst.max()) + 1, -1, np.int64)
    for value, name in li.classes.items():
        if 0 < value < obj_cls.size:
            obj_cls[value] = class_ids.get(name, 0)
    crops = aset.crops or []
    boxes = [c.pixel_slices() for c in crops] if crops else [(slice(0, H), slice(0, W))]
    rng = np.random.default_rng(seed)
    regions = []
    m_in = int(math.ceil(margin_px / scale))
    for k, (ys, xs) in enumerate(boxes):
        if ys.stop <= ys.start or xs.stop <= xs.start:
            continue
        y0, y1 = max(ys.start - m_in, 0), min(ys.stop + m_in, H)
        x0, x1 = max(xs.start - m_in, 0), min(xs.stop + m_in, W)
        annotated = np.zeros((y1 - y0, x1 - x0), bool)
        annotated[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = True
        out_shape = (max(8, int(round((y1 - y0) * scale))), max(8, int(round((x1 - x0) * scale))))
        img = _resize(normalise(image[y0:y1, x0:x1], lo, hi), out_shape, "bilinear").astype(np.float32)
        lab = _resize(inst[y0:y1, x0:x1].astype(np.float32), out_shape, "nearest").astype(np.int32)
        ann = _resize(annotated.astype(np.float32), out_shape, "nearest") > 0.5
        fg = (lab > 0).astype(np.float32)
        cls = np.where(lab > 0, obj_cls[lab], -1)
        dist = normalised_distance(lab)
        val = _validation_cells(ann, val_fraction, cell_px, rng)
        regions.append(Region(img, fg, dist, cls, ann & ~val, val, lab, name=f"{aset.image_path or 'image'}#{k}"))
    return regions


def _validation_cells(annotated: np.ndarray, fraction: float, cell: int, rng: np.random.Generator) -> np.ndarray:
    """Hold out whole grid cells (about ``fraction`` of the annotated area)."""
    val = np.zeros_like(annotated)
    if fraction <= 0:
        return val
    gy, gx = math.ceil(annotated.shape[0] / cell), math.ceil(annotated.shape[1] / cell)
    cells = [(i, j) for i in range(gy) for j in range(gx) if annotated[i * cell : (i + 1) * cell, j * cell : (j + 1) * cell].any()]
    n_val = int(round(fraction * len(cells)))
    if len(cells) < 3 or n_val == 0:
        return val
    for idx in rng.choice(len(cells), size=n_val, replace=False):
        i, j = cells[idx]
        val[i * cell : (i + 1) * cell, j * cell : (j + 1) * cell] = True
    return val & annotated


class PatchSampler:
    """Random training patches centred inside annotated, non-validation pixels.

    ``weights``: a factor per region on its area, the default share of the patches it
    centres (the synthetic rehearsal regions get a fixed share of all patches this way).

    Augmentation (micrograph-safe): flips and 90-degree rotations, scale jitter
    (+-``scale_jitter``), contrast/brightness, gamma, Gaussian noise and blur. Pixels
    outside the region or outside crops get ``valid`` = 0.

    With two or more object classes in the training pixels, a fraction ``class_balance``
    of the patches is centred on a pixel of a class drawn uniformly among the classes
    (then augmented like any patch), so a rare class is seen as often as a common one
    (Zelenka et al.'s imbalance problem); the rest are drawn uniformly over the area.
    """

    def __init__(self, regions: list[Region], patch: int = 128, seed: int = 0, scale_jitter: float = 0.25,
                 augment: bool = True, invert_p: float = 0.0, class_balance: float = 0.5,
                 weights: Sequence[float] | None = None, paste: float = 0.0, paste_max: int = 4,
                 paste_tolerance: float = 1.0):
        if not 0.0 <= paste <= 1.0:
            raise ValueError(f"paste must be a probability in [0, 1], got {paste!r}")
        self.regions = [r for r in regions if r.train.any()]
        if not self.regions:
            raise NanodefectError("no annotated training area: draw at least one crop with objects inside")
        self.patch = patch
        self.rng = np.random.default_rng(seed)
        self.jitter = scale_jitter
        self.augment = augment
        self.invert_p = invert_p  #: probability of swapping bright and dark (generic models)
        area = np.array([r.train.sum() for r in self.regions], float)
        if weights is not None:  # per-region factors on the area
            area *= np.asarray([w for r, w in zip(regions, weights) if r.train.any()], float)
        self.weights = area / area.sum()
        self.coords = [np.flatnonzero(r.train) for r in self.regions]
        # per class: (region index, flat pixel index) of its training pixels
        per: dict[int, list[tuple[int, np.ndarray]]] = {}
        for k, r in enumerate(self.regions):
            for c in np.unique(r.cls[r.train]):
                if c >= 0:
                    per.setdefault(int(c), []).append((k, np.flatnonzero(r.train & (r.cls == c))))
        self.class_pixels = {c: (np.concatenate([np.full(len(f), k) for k, f in lst]), np.concatenate([f for _, f in lst]))
                             for c, lst in per.items()}
        self.class_balance = float(class_balance) if len(self.class_pixels) >= 2 else 0.0
        self.paste, self.paste_max, self.paste_tolerance = float(paste), max(1, int(paste_max)), float(paste_tolerance)
        self.bank = paste_bank(self.regions) if self.paste > 0 else []

    def _one(self) -> tuple[np.ndarray, ...]:
        if self.class_balance and self.rng.random() < self.class_balance:
            ks, flat = self.class_pixels[sorted(self.class_pixels)[int(self.rng.integers(len(self.class_pixels)))]]
            i = int(self.rng.integers(len(flat)))
            k, c = int(ks[i]), flat[i]
        else:
            k = self.rng.choice(len(self.regions), p=self.weights)
            c = self.coords[k][self.rng.integers(len(self.coords[k]))]
        r = self.regions[k]
        cy, cx = divmod(int(c), r.image.shape[1])
        s = math.exp(self.rng.uniform(-self.jitter, self.jitter)) if self.augment else 1.0
        size = max(8, int(round(self.patch * s)))
        y0, x0 = cy - size // 2 + int(self.rng.integers(-size // 4, size // 4 + 1)), cx - size // 2 + int(self.rng.integers(-size // 4, size // 4 + 1))
        stack = [r.image, r.fg, r.dist, r.cls.astype(np.float32), r.train.astype(np.float32)]
        out = [_window_pad(a, y0, x0, size, fill) for a, fill in zip(stack, (0.0, 0.0, 0.0, -1.0, 0.0))]
        if self.bank and self.rng.random() < self.paste:
            paste_objects(out, self.bank, self.rng, int(self.rng.integers(1, self.paste_max + 1)), self.paste_tolerance)
        return tuple(out)

    def batch(self, n: int) -> dict[str, torch.Tensor]:
        items = [self._one() for _ in range(n)]
        P = self.patch
        cols = []
        for j, mode in enumerate(("bilinear", "nearest", "bilinear", "nearest", "nearest")):
            cols.append(torch.stack([_to_tensor(it[j], P, mode) for it in items]))
        img, fg, dist, cls, valid = cols
        if self.augment:
            img, fg, dist, cls, valid = _geometric(self.rng, img, fg, dist, cls, valid)
            img = _photometric(self.rng, img, self.invert_p)
        return {"image": img, "fg": fg, "dist": dist, "cls": cls.long(), "valid": valid}


@dataclass
class Pasteable:
    """A labelled object cut out for pasting: its contrast over its surroundings."""

    delta: np.ndarray  #: image minus the median of its ring, soft-edged (float32)
    mask: np.ndarray  #: bool
    dist: np.ndarray  #: float32 target inside the mask
    cls: np.ndarray  #: float32 class index inside the mask, -1 elsewhere
    footprint: np.ndarray  #: bool: the mask grown by RING_PX (must land on free training pixels)
    ring: np.ndarray  #: bool: the footprint's ring, where the support level is measured
    level: float  #: the median of the image on the ring where it was cut
    spread: float  #: the standard deviation there


PASTE_RING_PX = 3
PASTE_MAX_SIDE = 80


def paste_bank(regions: Sequence[Region]) -> list[Pasteable]:
    """Every labelled object lying wholly on training pixels (at least 9 px, at most
    :data:`PASTE_MAX_SIDE` px a side, with a ring of at least 8 pixels clear of other
    objects), cut out for :func:`paste_objects`."""
    bank = []
    m = PASTE_RING_PX + 1
    for r in regions:
        lab = r.labels
        if lab is None or lab.size == 0 or lab.max() == 0:
            continue
        for i, sl in enumerate(ndi.find_objects(lab)):
            if sl is None:
                continue
            y0, y1 = max(sl[0].start - m, 0), min(sl[0].stop + m, lab.shape[0])
            x0, x1 = max(sl[1].start - m, 0), min(sl[1].stop + m, lab.shape[1])
            sub = lab[y0:y1, x0:x1]
            mask = sub == i + 1
            if mask.sum() < 9 or max(mask.shape) > PASTE_MAX_SIDE or not r.train[y0:y1, x0:x1][mask].all():
                continue
            foot = ndi.binary_dilation(mask, iterations=PASTE_RING_PX)
            ring = foot & ~ndi.binary_dilation(sub > 0, iterations=1)
            if ring.sum() < 8:
                continue
            img = r.image[y0:y1, x0:x1]
            level = float(np.median(img[ring]))
            soft = np.clip(ndi.gaussian_filter(mask.astype(np.float32), 0.8), 0.0, 1.0)
            bank.append(Pasteable(((img - level) * soft).astype(np.float32), mask, (r.dist[y0:y1, x0:x1] * mask).astype(np.float32),
                                  np.where(mask, r.cls[y0:y1, x0:x1], -1).astype(np.float32), foot, ring, level,
                                  float(np.std(img[ring])) + 1e-3))
    return bank


def paste_objects(window: list[np.ndarray], bank: Sequence[Pasteable], rng: np.random.Generator, n: int,
                  tolerance: float = 1.0, tries: int = 6) -> int:
    """Copy-paste augmentation, in place on ``window`` = ``[image, fg, dist, cls, valid]``
    of one patch: up to ``n`` objects drawn from ``bank`` are added (their contrast over
    their ring's median) at random spots whose footprint lies wholly on training pixels,
    touches no object, and whose ring median is within ``tolerance`` times the object's
    own ring spread of the level it was cut from (so a particle goes onto support like
    its own, not onto a clump; ``tolerance`` <= 0: anywhere free). Returns how many were pasted."""
    img, fg, dist, cls, valid = window
    S0, S1 = img.shape
    done = 0
    for _ in range(n):
        o = bank[int(rng.integers(len(bank)))]
        h, w = o.mask.shape
        if h >= S0 or w >= S1:
            continue
        for _t in range(tries):
            y, x = int(rng.integers(0, S0 - h)), int(rng.integers(0, S1 - w))
            win = (slice(y, y + h), slice(x, x + w))
            if not (valid[win][o.footprint] > 0).all() or (fg[win][o.footprint] > 0).any():
                continue
            if tolerance > 0 and abs(float(np.median(img[win][o.ring])) - o.level) > tolerance * o.spread:
                continue
            img[win] += o.delta
            fg[win][o.mask] = 1.0
            dist[win][o.mask] = o.dist[o.mask]
            cls[win][o.mask] = o.cls[o.mask]
            done += 1
            break
    return done


def _window_pad(a: np.ndarray, y0: int, x0: int, size: int, fill: float) -> np.ndarray:
    out = np.full((size, size), fill, np.float32)
    H, W = a.shape
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + size, H), min(x0 + size, W)
    if ye > ys and xe > xs:
        out[ys - y0 : ye - y0, xs - x0 : xe - x0] = a[ys:ye, xs:xe]
    return out


def _to_tensor(a: np.ndarray, P: int, mode: str) -> torch.Tensor:
    t = torch.from_numpy(a)[None, None]
    if a.shape != (P, P):
        kw = {"align_corners": False} if mode == "bilinear" else {}
        t = F.interpolate(t, size=(P, P), mode=mode, **kw)
    return t[0]


def _geometric(rng, *ts):
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    out = []
    for t in ts:
        t = torch.rot90(t, k, dims=(-2, -1))
        if flip:
            t = torch.flip(t, dims=(-1,))
        out.append(t.contiguous())
    return out


def _photometric(rng, img: torch.Tensor, invert_p: float = 0.0) -> torch.Tensor:
    n = img.shape[0]
    g = torch.from_numpy(np.exp(rng.uniform(-0.4, 0.4, n)).astype(np.float32)).view(n, 1, 1, 1)
    c = torch.from_numpy(rng.uniform(0.7, 1.3, n).astype(np.float32)).view(n, 1, 1, 1)
    b = torch.from_numpy(rng.uniform(-0.15, 0.15, n).astype(np.float32)).view(n, 1, 1, 1)
    x = img.clamp(0, 1) ** g + (img - img.clamp(0, 1))
    x = (x - 0.5) * c + 0.5 + b
    if rng.random() < 0.3:
        sigma = float(rng.uniform(0.5, 1.2))
        r = int(math.ceil(2 * sigma))
        k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
        k = (k / k.sum()).view(1, 1, 1, -1)
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k)
        x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.transpose(-1, -2))
    noise = torch.from_numpy(rng.uniform(0, 0.08, n).astype(np.float32)).view(n, 1, 1, 1)
    x = x + noise * torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))
    if rng.random() < invert_p:  # polarity: bright-on-dark <-> dark-on-bright
        x = 1.0 - x
    return x.clamp(-0.5, 1.5)


def region_from_labels(
    image: np.ndarray,
    labels: np.ndarray,
    scale: float = 1.0,
    classes: np.ndarray | None = None,
    annotated: np.ndarray | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    name: str = "",
) -> Region:
    """A training region straight from an image and its instance labels.

    ``classes``: class index per label value (index 0 unused), default all 0.
    ``annotated``: where the labels are complete (default: everywhere).
    """
    lo, hi = robust_range(image)
    shape = (max(8, int(round(image.shape[0] * scale))), max(8, int(round(image.shape[1] * scale))))
    img = _resize(normalise(image, lo, hi), shape, "bilinear").astype(np.float32)
    lab = _resize(labels.astype(np.float32), shape, "nearest").astype(np.int32)
    ann = np.ones(shape, bool) if annotated is None else _resize(annotated.astype(np.float32), shape, "nearest") > 0.5
    obj_cls = np.zeros(int(lab.max()) + 1, np.int64) if classes is None else np.asarray(classes, np.int64)
    cls = np.where(lab > 0, obj_cls[lab], -1)
    val = _validation_cells(ann, val_fraction, 64, np.random.default_rng(seed))
    return Region(img, (lab > 0).astype(np.float32), normalised_distance(lab), cls, ann & ~val, val, lab, name)
