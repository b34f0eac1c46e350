"""Tiled whole-image inference with smooth blending, bounded memory and scale handling.

The image is cut into overlapping tiles *at its own resolution*; each tile is resized by
the scale factor ``s`` (so objects appear at the size the model was trained at), run
through the network in batches, resized back and blended into the output with a window
that falls smoothly to ~0 at the tile edges. Rows of the output are finished band by
band, so only one band of float accumulators is alive; finished maps are kept as uint8
(probability x 255). Instances are then extracted from the whole-image maps, so there are
no seams: the result does not depend on where tiles begin.

Scale ``s`` (network pixels per image pixel):
- when the model and the image both know their pixel size: ``s = image nm/px / model nm/px``;
- else ``"auto"``: :func:`estimate_scale` probes a central window of the image at
  several scales (0.15x to 4x) and keeps the one where the model is most confident about
  the objects it finds (mean foreground probability inside objects, smoothed over
  neighbouring scales, at least 4 objects, not a texture read as packed objects: see
  :func:`plausible_coverage`, and of one polarity: :func:`polarity_coherence`; with a
  larger window when the first one held few objects); after
  the whole-image pass, if the median
  object is still more than 1.5x larger than the trained size, one more pass at a
  smaller scale corrects it;
- or a number given by the user.

With ``faint_threshold`` > 0 in the model's config (0.05 in the shipped starter), the same
maps are read again at that lower foreground level, and the objects found there that touch
nothing found at ``fg_threshold`` and stand out like the particles found are added: small
and faint particles the network is unsure of (no extra network time; docs/model.md).

``zoom=True`` adds a second look for particles too small for the chosen scale: the image is
segmented again at :data:`ZOOM_FACTOR` times the scale, and the objects found there that
touch nothing found at the first scale and stand out like the particles already found are
added (:func:`~.instances.add_missed_objects`; docs/model.md, "A second look for small
particles").
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import NanodefectError
from ..micrograph import Micrograph
from .background import Background, estimate_background
from .instances import _above, add_missed_objects, drop_reversed_contrast, extract_instances, object_contrast
from .model import LoadedModel

ProgressFn = Callable[[int, int], None]

#: low-pass the image when shrinking it for the network
ANTIALIAS = True

#: the automatic scale never makes the network look at more pixels than this
MAX_NETWORK_PIXELS = 2.5e8


@dataclass
class Prediction:
    """Result of :func:`predict_array` / :func:`predict_image`.

    ``labels``: int32 instance labels of the analysed plane (0 = background).
    ``classes``: label -> class name. ``scale``: network px per image px that was used.
    ``foreground``: uint8 probability map x255 (kept when asked for).
    ``precision``: the arithmetic the network ran in ("float32", "bfloat16" or "float16").
    """

    labels: np.ndarray
    classes: dict[int, str]
    scale: float
    scale_source: str
    foreground: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    micrograph: Micrograph | None = None
    precision: str = "float32"

    @property
    def count(self) -> int:
        return int(self.labels.max())


def robust_range(image: np.ndarray, low: float = 0.5, high: float = 99.5, max_samples: int = 1_000_000) -> tuple[float, float]:
    """Percentiles of a regular subsample: the normalisation range of an image."""
    step = max(1, int(math.sqrt(image.size / max_samples)))
    sub = np.asarray(image[::step, ::step], dtype=np.float32)
    lo, hi = np.percentile(sub, [low, high])
    if not hi > lo:
        lo, hi = float(sub.min()), float(sub.max())
        if not hi > lo:
            hi = lo + 1.0
    return float(lo), float(hi)


def support_background(cfg, image: np.ndarray, scale: float) -> Background | None:
    """The support field a model with ``background_size`` > 0 subtracts at ``scale``
    (particles of ``object_diameter_px / scale`` image px), or None."""
    if not (cfg.background_size and cfg.background_size > 0):
        return None
    return estimate_background(image, cfg.object_diameter_px / max(scale, 1e-6), None, cfg.background_size)


def flat_range(image: np.ndarray, bg: Background | None, low: float = 0.5, high: float = 99.5,
               max_samples: int = 1_000_000) -> tuple[float, float]:
    """:func:`robust_range` of ``image`` minus ``bg`` (on the same regular subsample)."""
    if bg is None:
        return robust_range(image, low, high, max_samples)
    step = max(1, int(math.sqrt(image.size / max_samples)))
    H, W = image.shape
    sub = np.asarray(image[::step, ::step], np.float32) - bg.sample(np.arange(0, H, step), np.arange(0, W, step))
    return robust_range(sub, low, high, max_samples)


def _percentiles(cfg) -> tuple[float, float]:
    return cfg.normalisation.get("low_percentile", 0.5), cfg.normalisation.get("high_percentile", 99.5)


def shrink(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` resized down to ``shape`` (bilinear with a low-pass, as the network's tiles
    are: float32)."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    return F.interpolate(t, size=shape, mode="bilinear", align_corners=False, antialias=True)[0, 0].numpy()


def normalise(tile: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``[lo, hi]`` to ``[0, 1]`` (values beyond are kept, clipped to [-0.5, 1.5])."""
    out = (tile.astype(np.float32) - lo) * (1.0 / (hi - lo))
    return np.clip(out, -0.5, 1.5, out=out)


def _window(n: int, ramp: int) -> np.ndarray:
    """1-D blending weight: a raised-cosine ramp of ``ramp`` px at both ends, 1 inside."""
    w = np.ones(n, np.float32)
    if ramp > 0:
        r = min(ramp, n // 2)
        t = (np.arange(r, dtype=np.float32) + 0.5) / r
        w[:r] = 0.5 - 0.5 * np.cos(np.pi * t)
        w[n - r :] = w[:r][::-1]
    return np.maximum(w, 1e-3)


def _even_tiles(length: int, t_max: int, overlap: int) -> tuple[list[int], int]:
    """Tile starts and size along one axis: as few tiles as fit ``t_max`` with at least
    ``overlap`` px shared, spread evenly so no more pixels are computed than needed."""
    if length <= t_max:
        return [0], length
    n = math.ceil((length - overlap) / (t_max - overlap))
    t = min(length, math.ceil((length + (n - 1) * overlap) / n))
    starts = sorted({int(round(v)) for v in np.linspace(0, length - t, n)})
    return starts, t


def _net_size(n: int, s: float, multiple: int = 32) -> int:
    return max(multiple, int(math.ceil(n * s / multiple)) * multiple)


@torch.inference_mode()
def predict_maps(
    model: LoadedModel,
    image: np.ndarray,
    scale: float = 1.0,
    batch_size: int | None = None,
    progress: ProgressFn | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    value_range: tuple[float, float] | None = None,
    flatten: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Blended network maps at the image's resolution: ``fg``, ``dist`` (uint8 x255) and
    class probabilities ``(C, H, W)`` uint8 (None for single-class models).

    ``value_range``: the ``(lo, hi)`` normalisation range, when it was measured elsewhere
    (default: the image's own, after flattening); ``flatten=False``: the image is already
    flattened (the scale probe shrinks and flattens a window itself)."""
    cfg = model.config
    H, W = image.shape
    # one tile at a time is fastest on CPU (cache-bound); GPUs want batches
    batch_size = batch_size or (4 if model.device.type == "cuda" else 1)
    T = int(tile_size or cfg.tile_size)
    O = int(overlap if overlap is not None else cfg.tile_overlap)
    t_in = max(16, int(round(T / scale)))  # largest tile in image pixels
    o_in = max(2, int(round(O / scale)))
    (ys, th), (xs, tw) = _even_tiles(H, t_in, o_in), _even_tiles(W, t_in, o_in)
    wy, wx = _window(th, o_in if len(ys) > 1 else 0), _window(tw, o_in if len(xs) > 1 else 0)
    win = np.outer(wy, wx)
    bg = support_background(cfg, image, scale) if flatten else None
    if value_range is None:
        lo, hi = flat_range(image, bg, *_percentiles(cfg))
    else:
        lo, hi = value_range
    n_cls = len(cfg.classes) if len(cfg.classes) > 1 else 0
    n_ch = 2 + n_cls
    fg_out = np.zeros((H, W), np.uint8)
    dist_out = np.zeros((H, W), np.uint8)
    cls_out = np.zeros((n_cls, H, W), np.uint8) if n_cls else None
    net_h, net_w = _net_size(th, scale), _net_size(tw, scale)
    dev = model.device
    low = model.autocast_dtype()  # float16 on CUDA, bfloat16 on CPUs with native bf16, else None
    net = model.inference_module()
    total = len(ys) * len(xs)
    done = 0
    # one band of accumulators per row of tiles: rows [y, y + th)
    acc_top = 0
    acc = np.zeros((n_ch, th, W), np.float32)  # rows [acc_top, acc_top + th)
    wsum = np.zeros((acc.shape[1], W), np.float32)

    def flush(upto: int) -> None:
        """Finish image rows [acc_top, upto): write uint8 maps, shift the band."""
        nonlocal acc_top
        n = upto - acc_top
        if n <= 0:
            return
        ws = wsum[:n]
        q = acc[:, :n] / ws[None]
        fg_out[acc_top:upto] = np.clip(q[0] * 255 + 0.5, 0, 255).astype(np.uint8)
        dist_out[acc_top:upto] = np.clip(q[1] * 255 + 0.5, 0, 255).astype(np.uint8)
        if cls_out is not None:
            cls_out[:, acc_top:upto] = np.clip(q[2:] * 255 + 0.5, 0, 255).astype(np.uint8)
        acc[:, :-n] = acc[:, n:].copy()
        acc[:, -n:] = 0
        wsum[:-n] = wsum[n:].copy()
        wsum[-n:] = 0
        acc_top = upto

    for y in ys:
        flush(y)
        if y + th - acc_top > acc.shape[1]:
            raise AssertionError("band too small")  # pragma: no cover - guarded by sizes above
        batch: list[tuple[int, np.ndarray]] = []
        for i, x in enumerate(xs):
            tile = image[y : y + th, x : x + tw]
            if bg is not None:
                tile = bg.subtract(tile, y, x)
            batch.append((x, normalise(tile, lo, hi)))
            if len(batch) == batch_size or i == len(xs) - 1:
                arr = torch.from_numpy(np.stack([b[1] for b in batch])[:, None]).to(dev)
                if (net_h, net_w) != (th, tw):
                    arr = F.interpolate(arr, size=(net_h, net_w), mode="bilinear", align_corners=False,
                                        antialias=ANTIALIAS and net_h < th)
                arr = arr.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device_type=dev.type, dtype=low or torch.float32, enabled=low is not None):
                    out = net(arr)
                out = out.float()
                probs = torch.sigmoid(out[:, :2])
                if n_cls:
                    probs = torch.cat([probs, torch.softmax(out[:, 2:], dim=1)], dim=1)
                if (net_h, net_w) != (th, tw):
                    probs = F.interpolate(probs, size=(th, tw), mode="bilinear", align_corners=False)
                probs = probs.cpu().numpy()
                for (bx, _), p in zip(batch, probs):
                    r0 = y - acc_top
                    acc[:, r0 : r0 + th, bx : bx + tw] += p * win[None]
                    wsum[r0 : r0 + th, bx : bx + tw] += win
                done += len(batch)
                if progress:
                    progress(done, total)
                batch = []
    flush(H)
    return fg_out, dist_out, cls_out


PROBE_SCALES = tuple(float(v) for v in np.exp(np.linspace(np.log(0.15), np.log(4.0), 11)))
#: width (natural log units) of the probe's prior around the model's training scale
SCALE_PRIOR_SIGMA = 2.0
#: automatic scale: a whole-image result with more of the image inside objects than this is
#: taken as a wrong scale, and up to MAX_SCALE_RETRIES next-best probe scales are tried
MAX_OBJECT_COVERAGE = 0.3
#: ...unless the objects have solid cores: dense particle fields (35-45 % of the image in
#: the synthetic training data, more where a model draws outlines a little wide) are
#: accepted up to DENSE_MAX_COVERAGE when at least MIN_CORE_FRACTION of the object area
#: is object core (distance map above the seed threshold). A texture read as packed
#: particles at a wrong scale has thin cores (2-15 % of its area on the STEM test images)
DENSE_MAX_COVERAGE = 0.65
MIN_CORE_FRACTION = 0.2


def plausible_coverage(coverage: float, core_coverage: float) -> bool:
    """Whether objects covering ``coverage`` of an image (``core_coverage`` of it object
    cores) look like particles rather than a background texture read as packed objects."""
    if coverage <= MAX_OBJECT_COVERAGE:
        return True
    return coverage <= DENSE_MAX_COVERAGE and core_coverage >= MIN_CORE_FRACTION * coverage


def _core_coverage(dist: np.ndarray, cfg) -> float:
    return float(np.count_nonzero(_above(dist, cfg.seed_threshold))) / dist.size


MAX_SCALE_RETRIES = 3
#: the scale probe's window (network px a side)...
PROBE_WINDOW = 448
#: ...and the larger one it is repeated with when the chosen scale's window held fewer
#: than PROBE_MIN_OBJECTS objects (and did not already show the whole image): with a
#: dozen or two particles per window the score's count and mean confidence are too noisy
#: to rank neighbouring scales, and a fixed network window shows fewer image pixels, so
#: fewer particles, the larger the scale (docs/model.md, "Scale normalisation")
PROBE_WINDOW_LARGE = 768
PROBE_MIN_OBJECTS = 50
#: the larger window re-measures the first probe's choice and this many scales on each
#: side of it (the next ones out lend the smoothing their first-window scores, rescaled)
REPEAT_STEPS = 1
#: the probe measures a shrunk window's normalisation range on a regular subsample of at
#: most this many of its full-resolution pixels (the whole-image pass uses 10**6)
PROBE_RANGE_SAMPLES = 250_000
#: the probe's score is multiplied by the objects' polarity coherence to this power
#: (:func:`polarity_coherence`)
COHERENCE_POWER = 4
#: the probe's score is multiplied by a log-normal factor of the objects' median diameter
#: (network px) around the trained ``object_diameter_px``, this wide (natural-log units)
SIZE_SIGMA = 0.5


def polarity_coherence(labels: np.ndarray, image: np.ndarray, ring_px: int) -> float:
    """How much the objects agree on their contrast sign: ``|sum c| / sum |c|`` over the
    objects' contrasts with their surroundings (:func:`~.instances.object_contrast`):
    1 when all are brighter (or all darker) than their rings, ~0 when bright and dark
    objects balance, 1.0 when no object has a ring (nothing to judge).

    Particles in one micrograph share a polarity (bright in HAADF, dark in bright field).
    A polarity-agnostic model that reads a support texture (carbon grain, gaps between
    W/C clumps) as objects at a wrong magnification picks bright and dark grains alike:
    on the STEM test images such probe windows score 0.6-0.85, windows at the right scale
    0.9-1.0."""
    c = object_contrast(labels, image, ring_px)
    c = c[np.isfinite(c)]
    total = float(np.abs(c).sum())
    return abs(float(c.sum())) / total if total > 0 else 1.0


def size_consistency(diameter_px: float, trained_px: float, sigma: float | None = None) -> float:
    """``exp(-ln(d / d0)^2 / (2 sigma^2))``: how well the objects' median diameter ``d``
    (network px) matches the size ``d0`` the model was trained to see."""
    sigma = SIZE_SIGMA if sigma is None else sigma
    if not (diameter_px > 0 and trained_px > 0 and sigma > 0):
        return 1.0
    return math.exp(-math.log(diameter_px / trained_px) ** 2 / (2 * sigma**2))


def _probe_window(model: LoadedModel, crop: np.ndarray, c: float) -> tuple[np.ndarray, float, tuple[float, float] | None]:
    """The probe's view of ``crop`` at network scale ``c``: at ``c < 1`` the window is
    shrunk to network size first (and the support subtracted there), so flattening,
    instances and contrasts are computed on ``c**2`` as many pixels as at the image's
    resolution (the same low-pass the tiles of :func:`predict_maps` get); the normalisation
    range is still measured on the full-resolution window, as :func:`predict_maps` does.
    Returns the window, its network px per window px (1 when shrunk), and its normalisation range when it
    was shrunk and flattened here (None: :func:`predict_maps` does both)."""
    cfg = model.config
    h, w = crop.shape
    hs, ws = max(1, int(round(h * c))), max(1, int(round(w * c)))
    if c >= 1 or not ANTIALIAS or min(hs, ws) < 32:
        return crop, c, None
    bg = support_background(cfg, crop, c)
    lo, hi = flat_range(crop, bg, *_percentiles(cfg), max_samples=PROBE_RANGE_SAMPLES)
    small = shrink(crop, (hs, ws))
    if bg is not None:
        # the field at the small pixels' centres, in window coordinates
        small -= bg.sample((np.arange(hs) + 0.5) * (h / hs) - 0.5, (np.arange(ws) + 0.5) * (w / ws) - 0.5)
    return small, 1.0, (lo, hi)


def estimate_scale(model: LoadedModel, image: np.ndarray, window: int | None = None,
                   candidates: tuple[float, ...] = PROBE_SCALES) -> tuple[float, list[dict]]:
    """Scale at which the model is most confident about the objects in ``image``.

    A central window (``window`` network px; by default :data:`PROBE_WINDOW`, and the
    chosen scale and :data:`REPEAT_STEPS` candidates on each side of it are measured again
    with :data:`PROBE_WINDOW_LARGE` when the chosen scale's window held fewer than
    :data:`PROBE_MIN_OBJECTS` objects and was not the whole image; each entry of the
    statistics records its ``window``) is segmented at each candidate scale; the
    score is ``mean_fg ** 8 * log(1 + n)`` (``mean_fg``: mean foreground probability inside
    the ``n`` objects found; 0 with fewer than 4 objects, or when their coverage of the
    window is implausible, see :func:`plausible_coverage`), times the objects'
    :func:`polarity_coherence` to the power :data:`COHERENCE_POWER` (a texture read as
    bright and dark objects alike scores low), times :func:`size_consistency` of their
    median network diameter with the trained ``object_diameter_px`` (a support grain read
    as specks half the trained size at a too-large scale scores low), smoothed over neighbouring scales (zero
    beyond the candidate range), times a weak log-normal prior around the model's training scale
    (:data:`SCALE_PRIOR_SIGMA`). On the 20 STEM few-shot test images (2026-12-05) the
    chosen scale is within 1.5x / 2x of the one given by the annotated box sizes for
    14 / 20 images with the starter model and 15 / 19 with the starter fine-tuned on
    Cu1 + Cu3, none off by more than 3x (these settings were chosen on those same images;
    docs/model.md has the history). Returns the scale and the per-scale statistics (count,
    median diameter in network px, coherence, score, prior).
    """
    if window is not None:
        return _probe(model, image, int(window), candidates)
    s, stats = _probe(model, image, PROBE_WINDOW, candidates)
    i = max(range(len(stats)), key=lambda k: stats[k].get("rank_score", 0.0))
    best = stats[i]
    H, W = image.shape
    whole = int(min(H, W, max(32, PROBE_WINDOW / best["scale"]))) >= min(H, W)
    if best.get("rank_score", 0.0) > 0 and best["count"] < PROBE_MIN_OBJECTS and not whole:
        # the larger window decides among the chosen scale and its neighbours; a window that
        # already showed the whole image gives the same objects again and is not recomputed
        near = range(max(0, i - REPEAT_STEPS), min(len(stats), i + 1 + REPEAT_STEPS))
        known = {k: stats[k] for k in near
                 if int(min(H, W, max(32, PROBE_WINDOW / candidates[k]))) >= min(H, W)}
        s2, stats2 = _probe(model, image, PROBE_WINDOW_LARGE, candidates, only=near, known=known, first=stats)
        if any(stats2[k].get("rank_score", 0.0) > 0 for k in near):
            # candidates the repeat did not measure keep the first window's entries (the
            # retries after an implausible whole-image result draw on them)
            return s2, [stats2[k] if k in near else stats[k] for k in range(len(stats))]
    return s, stats


def _probe(model: LoadedModel, image: np.ndarray, window: int, candidates: tuple[float, ...],
           only: range | None = None, known: dict[int, dict] | None = None,
           first: list[dict] | None = None) -> tuple[float, list[dict]]:
    """:func:`estimate_scale` with one window size. ``only``: the candidate indices to
    measure and choose among (the others score 0); ``known``: entries already measured on
    the same pixels, reused; ``first``: a probe with another window whose scores of the two
    candidates just outside ``only``, times the geometric mean ratio of this window's
    scores to that one's over ``only``, stand in as their neighbours for the smoothing."""
    H, W = image.shape
    cfg = model.config
    stats = []
    for k, c in enumerate(candidates):
        if only is not None and k not in only:
            stats.append({"scale": c, "count": 0, "diameter_px": float("nan"), "score": 0.0,
                          "coherence": float("nan"), "window": window, "skipped": True})
            continue
        if known and k in known:
            stats.append({**known[k], "window": window})
            continue
        side = int(min(H, W, max(32, window / c)))
        y0, x0 = (H - side) // 2, (W - side) // 2
        crop = image[y0 : y0 + side, x0 : x0 + side]
        crop, px, rng = _probe_window(model, crop, c)  # px: network px per pixel of the maps
        fg, dist, _ = predict_maps(model, crop, px, value_range=rng, flatten=rng is None)
        lab, _ = extract_instances(fg, dist, cfg.fg_threshold, cfg.seed_threshold, cfg.min_area_px / (px * px))
        n = int(lab.max())
        score, d_net, coherence = 0.0, float("nan"), float("nan")
        if n:
            area = np.bincount(lab.ravel())[1:]
            d_net = float(np.median(2 * np.sqrt(area / np.pi)) * px)
            mean_fg = np.bincount(lab.ravel(), fg.ravel().astype(np.float64))[1:] / np.maximum(area, 1) / 255.0
            coverage = float(area.sum()) / lab.size
            # particles are a minority of a field of view: a window mostly "foreground"
            # means the model is reading the background as objects at this scale
            # confident objects, and many of them: few big blobs at too small a scale,
            # or specks at too large a scale, both score low
            plausible = plausible_coverage(coverage, _core_coverage(dist, cfg)) if coverage > MAX_OBJECT_COVERAGE else True
            score = float(mean_fg.mean()) ** 8 * math.log1p(n) if n >= 4 and plausible else 0.0
            if score > 0:
                # particles share one polarity; a texture read as objects does not
                coherence = polarity_coherence(lab, crop, max(2, int(round(cfg.contrast_ring_px / px))))
                score *= coherence**COHERENCE_POWER
                if SIZE_SIGMA > 0:
                    score *= size_consistency(d_net, cfg.object_diameter_px)
        stats.append({"scale": c, "count": n, "diameter_px": d_net, "score": score, "coherence": coherence,
                      "window": window})
    sc = np.array([st["score"] for st in stats])
    ok = sc > 0
    if only is not None:
        ok &= np.isin(np.arange(len(candidates)), list(only))
    if only is not None and first is not None:
        pairs = [(st["score"], f["score"]) for k, (st, f) in enumerate(zip(stats, first))
                 if k in only and st["score"] > 0 and f["score"] > 0]
        ratio = float(np.exp(np.mean([math.log(a / b) for a, b in pairs]))) if pairs else 1.0
        for k in (only.start - 1, only.stop):
            if 0 <= k < len(candidates):
                sc[k] = first[k]["score"] * ratio
    if not ok.any():
        return float(cfg.train_scale or 1.0), stats
    # zero beyond the ends: repeating the end values ("edge") gave the first and last
    # candidates the full weight of a neighbour they do not have, and the probe ran off to
    # 0.15 or 4.0 on flat score curves
    pad = np.pad(sc, 1, mode="constant")
    smooth = (pad[:-2] + 2 * pad[1:-1] + pad[2:]) / 4 * ok
    # a weak prior for the training magnification (sigma: a factor e^2 = 7.4): breaks near
    # ties between far-apart scales in favour of the one the user's crops were at
    centre = float(cfg.train_scale or 1.0)
    prior = np.exp(-np.log(np.asarray(candidates) / centre) ** 2 / (2 * SCALE_PRIOR_SIGMA**2))
    for st, p, v in zip(stats, prior, smooth * prior):
        st["prior"], st["rank_score"] = float(p), float(v)
    return float(candidates[int(np.argmax(smooth * prior))]), stats


def _median_diameter(labels: np.ndarray) -> tuple[float, int]:
    area = np.bincount(labels.ravel())[1:]
    area = area[area > 0]
    if area.size == 0:
        return float("nan"), 0
    return float(np.median(2 * np.sqrt(area / np.pi))), int(area.size)


def choose_scale(model: LoadedModel, pixel_size_nm: float | None, scale: float | str | None) -> tuple[float | None, str]:
    """The scale to use, or None when it must be found automatically."""
    cfg = model.config
    if isinstance(scale, (int, float)):
        if not scale > 0:
            raise NanodefectError(f"scale must be positive, got {scale}")
        return float(scale), "given"
    if scale not in (None, "auto"):
        raise NanodefectError(f"scale must be a number or 'auto', got {scale!r}")
    if cfg.pixel_size_nm and pixel_size_nm:
        return pixel_size_nm / cfg.pixel_size_nm, f"pixel sizes ({pixel_size_nm:g} nm image, {cfg.pixel_size_nm:g} nm model)"
    return None, "auto"


def predict_array(
    model: LoadedModel,
    image: np.ndarray,
    *,
    pixel_size_nm: float | None = None,
    scale: float | str | None = "auto",
    batch_size: int | None = None,
    keep_foreground: bool = False,
    progress: ProgressFn | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    tta: bool = False,
    zoom: bool = False,
) -> Prediction:
    """Segment every object in a 2-D image (see the module docstring for the scale).

    ``zoom=True`` runs a second pass at :data:`ZOOM_FACTOR` times the final scale (unless
    that exceeds :data:`MAX_ZOOM_SCALE`) and adds the particles it finds that the first
    pass missed (:func:`~.instances.add_missed_objects`): about 2x the network time, more
    small and faint particles found.

    ``tta=True`` averages the network maps over four views (as is, flipped left-right,
    flipped up-down, rotated 180 degrees): about 4x the network time, for fewer spurious objects
    (see docs/model.md). The scale probe always uses the plain view."""
    if image.ndim != 2 or image.size == 0:
        raise NanodefectError(f"expected a non-empty 2-D image, got shape {image.shape}")
    cfg = model.config
    times: dict[str, float] = {}
    s, source = choose_scale(model, pixel_size_nm, scale)
    auto = s is None
    backups: list[float] = []
    if auto:
        t0 = time.perf_counter()
        s, stats = estimate_scale(model, image)
        times["scale_probe"] = time.perf_counter() - t0
        source = f"auto: probe chose {s:.3g}"
        ranked = sorted((st for st in stats if st.get("rank_score", 0) > 0), key=lambda st: -st["rank_score"])
        # a texture read as particles means the image is shown too large: smaller scales first
        backups = ([st["scale"] for st in ranked if st["scale"] < s] + [st["scale"] for st in ranked if st["scale"] > s])
        backups = backups[:MAX_SCALE_RETRIES]
    t0 = time.perf_counter()
    fg, dist, cls = _maps(model, image, s, batch_size, progress, tile_size, overlap, tta)
    times["network"] = time.perf_counter() - t0
    labels, cidx = _extract(fg, dist, cls, cfg, s)
    times["instances"] = time.perf_counter() - t0 - times["network"]
    # the probe sees a central window only; when the whole image comes back largely
    # "objects" (a support texture read as thousands of packed particles: 35-47 % of the
    # image at the wrong scales of two carbon-supported Pt images, against <= 10 % at the
    # right ones) the scale is wrong: try the probe's next-best smaller scales (then larger)
    # and keep the result with the least coverage
    cover = float(np.count_nonzero(labels)) / labels.size
    good = not auto or cover <= MAX_OBJECT_COVERAGE or plausible_coverage(cover, _core_coverage(dist, cfg))
    while auto and backups and not good:
        bad, s2 = s, backups.pop(0)
        t1 = time.perf_counter()
        fg2, dist2, cls2 = _maps(model, image, s2, batch_size, progress, tile_size, overlap, tta)
        labels2, cidx2 = _extract(fg2, dist2, cls2, cfg, s2)
        times["retry"] = times.get("retry", 0.0) + time.perf_counter() - t1
        cover2 = float(np.count_nonzero(labels2)) / labels2.size
        good2 = plausible_coverage(cover2, _core_coverage(dist2, cfg))
        source += f"; objects covered {cover:.0%} at {bad:.3g}, {cover2:.0%} at {s2:.3g}"
        if good2 or cover2 < cover:
            s, fg, dist, cls, labels, cidx, cover, good = s2, fg2, dist2, cls2, labels2, cidx2, cover2, good2
    if auto:
        d, n = _median_diameter(labels)
        if n >= 3 and np.isfinite(d):
            ratio = d * s / cfg.object_diameter_px
            # only downwards: objects much larger than trained. Upwards corrections chase
            # specks (noise, fragments) and multiply the work, so they are not made.
            if ratio > 1.5:
                s2 = float(np.clip(cfg.object_diameter_px / d, s / 2, s))
                s2 = min(s2, math.sqrt(MAX_NETWORK_PIXELS / image.size))  # bounded compute
                t1 = time.perf_counter()
                fg, dist, cls = _maps(model, image, s2, batch_size, progress, tile_size, overlap, tta)
                labels, cidx = _extract(fg, dist, cls, cfg, s2)
                times["second_pass"] = time.perf_counter() - t1
                source += f"; objects measured {d:.1f} px, re-run at {s2:.3g}"
                s = s2
    contrast = None  # of the objects in labels, when measured
    if cfg.contrast_ring_px > 0 and labels.max() > 0:
        t1 = time.perf_counter()
        labels, keep, contrast = drop_reversed_contrast(labels, image, max(2, int(round(cfg.contrast_ring_px / s))),
                                                        return_contrast=True)
        cidx = np.asarray(cidx)[keep]
        times["contrast"] = time.perf_counter() - t1
    if 0 < cfg.faint_threshold < cfg.fg_threshold and labels.max() > 0:
        t1 = time.perf_counter()
        faint, cidx2 = _extract(fg, dist, cls, cfg, s, threshold=cfg.faint_threshold, exclude=labels)
        ring = max(2, int(round((cfg.contrast_ring_px or DEFAULT_RING_PX) / s)))
        labels, added = add_missed_objects(labels, faint, image, ring, FAINT_MIN_CONTRAST, in_place=True,
                                           need_reference=True, contrast=contrast)
        del faint
        cidx = np.concatenate([np.asarray(cidx, np.int64).reshape(-1), np.asarray(cidx2, np.int64).reshape(-1)[added]])
        times["faint"] = time.perf_counter() - t1
        source += f"; {int(added.sum())} faint objects added"
    if zoom:
        s2 = s * ZOOM_FACTOR
        del dist, cls  # memory for the second pass's maps
        if not keep_foreground:
            fg = None
        if s2 > MAX_ZOOM_SCALE:
            source += f"; no zoom pass ({s2:.3g} would exceed {MAX_ZOOM_SCALE:g})"
        else:
            t1 = time.perf_counter()
            fg2, dist2, cls2 = _maps(model, image, s2, batch_size, progress, tile_size, overlap, tta)
            extra, cidx2 = _extract(fg2, dist2, cls2, cfg, s2)
            del fg2, dist2, cls2
            ring = max(2, int(round((cfg.contrast_ring_px or DEFAULT_RING_PX) / s)))
            labels, added = add_missed_objects(labels, extra, image, ring, ZOOM_MIN_CONTRAST, in_place=True)
            del extra
            cidx = np.concatenate([np.asarray(cidx, np.int64).reshape(-1), np.asarray(cidx2, np.int64).reshape(-1)[added]])
            times["zoom"] = time.perf_counter() - t1
            source += f"; zoom pass at {s2:.3g} added {int(added.sum())}"
    names = cfg.classes
    classes = {i + 1: names[int(c)] if len(names) > 1 else names[0] for i, c in enumerate(cidx)}
    low = model.autocast_dtype()
    return Prediction(labels=labels, classes=classes, scale=s, scale_source=source,
                      foreground=fg if keep_foreground else None, seconds=times,
                      precision="float32" if low is None else str(low).removeprefix("torch."))


#: ``zoom=True``: the second pass runs at this many times the chosen scale (one step of
#: :data:`PROBE_SCALES`): particles ~0.7x the median size, which the first pass sees at
#: ~0.7x the trained size and often misses, appear at the trained size there
ZOOM_FACTOR = float(PROBE_SCALES[1] / PROBE_SCALES[0])
#: ...unless that shows the image more than this many times larger than it is (network px
#: per image px): particles a few pixels wide have no finer detail to find
MAX_ZOOM_SCALE = 2.2
#: objects the zoom pass adds must stand out from their surroundings by at least this
#: fraction of the median contrast of the particles the first pass found
ZOOM_MIN_CONTRAST = 0.5
#: objects of the faint pass (``faint_threshold`` in a model's config) must stand out
#: from their surroundings by at least this fraction of the median contrast of the
#: particles found at ``fg_threshold``
FAINT_MIN_CONTRAST = 0.5
#: contrast ring (network px) for the zoom pass when a model's filter is off
DEFAULT_RING_PX = 3


#: the views averaged by ``tta=True``: (forward, inverse) pairs of array transforms. The
#: four flips form a group, so the averaged maps follow the image exactly when it is
#: flipped or rotated by 180 degrees (the same four network passes, in another order)
TTA_VIEWS = (
    (lambda a: a, lambda a: a),
    (lambda a: a[..., :, ::-1], lambda a: a[..., :, ::-1]),
    (lambda a: a[..., ::-1, :], lambda a: a[..., ::-1, :]),
    (lambda a: a[..., ::-1, ::-1], lambda a: a[..., ::-1, ::-1]),
)


def _maps(model, image, s, batch_size, progress, tile_size, overlap, tta):
    """``predict_maps``, or with ``tta`` the mean of its maps over :data:`TTA_VIEWS`
    (uint16 sums of the uint8 maps, so memory grows by two image-sized uint16 arrays)."""
    if not tta:
        return predict_maps(model, image, s, batch_size, progress, tile_size, overlap)
    sums: list[np.ndarray | None] = [None, None, None]
    for fwd, inv in TTA_VIEWS:
        maps = predict_maps(model, np.ascontiguousarray(fwd(image)), s, batch_size, progress, tile_size, overlap)
        for i, m in enumerate(maps):
            if m is None:
                continue
            m = inv(m)
            if sums[i] is None:
                sums[i] = m.astype(np.uint16)
            else:
                sums[i] += m
        del maps
    n = len(TTA_VIEWS)
    return tuple(None if a is None else ((a + n // 2) // n).astype(np.uint8) for a in sums)


def _extract(fg, dist, cls, cfg, s, threshold=None, exclude=None):
    # the minimum object area is set in network pixels; convert to image pixels
    min_area = cfg.min_area_px / (s * s)
    # peaks of the distance map are found on it smoothed by one network px
    if threshold is None:
        fg_t, seed_t = cfg.fg_threshold, cfg.seed_threshold
    else:  # the faint pass: foreground and (threshold-rule) seeds both at the lower level
        fg_t = seed_t = threshold
    return extract_instances(fg, dist, fg_t, seed_t, min_area, cls,
                             peak_h=cfg.split_peak_h, peak_sigma_px=1.0 / s, exclude=exclude)


def predict_image(model: LoadedModel, image: str | Path | Micrograph, **kwargs) -> Prediction:
    """Read (if a path) and segment a micrograph; uses its pixel size when known."""
    from ..io import read_image

    m = image if isinstance(image, Micrograph) else read_image(image)
    kwargs.setdefault("pixel_size_nm", m.pixel_size_nm)
    pred = predict_array(model, m.data, **kwargs)
    pred.micrograph = m
    return pred
