"""Multi-label defect segmentation (Boiko et al. 2021), Qt-free.

A segmentation-models-pytorch network (FPN or U-Net, one grey input channel) predicts one
independent (sigmoid) probability per defect class and pixel: the classes may overlap
(a point defect on a grain boundary). It is trained from annotated crops like the
particle model (:func:`~napari_nanodefect.core.defects.targets.defect_masks` makes the
``(C, H, W)`` targets, ``annotated`` says which pixels were looked at), with the heavy
augmentation the paper used: flips and 90° turns, random shift/scale/rotation with
reflection padding, a mild grid distortion, blur/sharpen, contrast/brightness/gamma and
noise. The loss is per-channel binary cross-entropy plus soft Dice, both weighted by the
``annotated`` mask, so pixels nobody annotated never influence training.

:func:`predict_defects` runs the network tile by tile with smooth blending (the result
does not depend on where the tiles begin) and returns uint8 probabilities x255;
:func:`defect_statistics` thresholds them and measures the line/area classes with
:func:`~napari_nanodefect.core.measure.skeleton.skeleton_table` (length in nm, length
density in nm/µm², branches) and counts the point classes (count and density per µm²).

Model folders mirror the particle model's (``model.safetensors`` + ``config.json``,
written atomically, never pickled) with ``"task": "defects"`` in the config.

Scale: ``config["pixel_size_nm"]`` records the training pixel size (training images of
different pixel sizes are resampled to a common one); :func:`predict_defects_scaled`
resamples an image of another pixel size to it, so a model trained at 2 nm/px works on a
1 nm/px image.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..errors import NanodefectError
from ..segment.model import (
    CONFIG,
    WEIGHTS,
    _env,
    imagenet_weights_cached,
    resolve_device,
)
from ..segment.predict import _even_tiles, normalise, robust_range

__all__ = [
    "DefectModel",
    "build_defect_model",
    "defect_statistics",
    "load_defect_model",
    "masked_loss",
    "predict_defects",
    "predict_defects_scaled",
    "threshold_masks",
    "thresholds_from_config",
    "calibrate_thresholds",
    "save_defect_model",
    "train_defects",
]

FORMAT = "napari-nanodefect-model"
FORMAT_VERSION = 1
TASK = "defects"
ARCHS = ("FPN", "Unet")

ProgressFn = Callable[[int, int], None]


@dataclass
class DefectModel:
    """A defect network: the torch ``module``, its ``classes`` (one output channel each),
    the ``config`` dict written to config.json and the ``device`` it lives on."""

    module: torch.nn.Module
    classes: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: prediction arithmetic, as for particle models: "auto" (float16 autocast on CUDA,
    #: bfloat16 on CPUs with native bf16, float32 elsewhere) or "fp32"
    #: (:func:`~napari_nanodefect.core.segment.model.autocast_dtype`)
    precision: str = "auto"

    def autocast_dtype(self) -> torch.dtype | None:
        """The reduced precision :func:`predict_defects` runs the network in (None: float32)."""
        from ..segment.model import autocast_dtype

        return autocast_dtype(self.device, self.precision)


# ----------------------------------------------------------------------------- model


def _default_config(classes: list[str], arch: str, encoder: str, encoder_depth: int,
                    decoder_channels: Sequence[int] | None) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "task": TASK,
        "arch": arch,
        "encoder": encoder,
        "encoder_depth": int(encoder_depth),
        "decoder_channels": None if decoder_channels is None else [int(c) for c in decoder_channels],
        "in_channels": 1,
        "classes": list(classes),
        "head": "sigmoid-per-class",
        "normalisation": {"low_percentile": 0.5, "high_percentile": 99.5},
        "pixel_size_nm": None,
        "line_width_px": None,
        "line_width_nm": None,
        "point_classes": ["point_defect"] if "point_defect" in classes else [],
        "threshold": 0.5,
        "tile_size": 512,
        "tile_overlap": 64,
        "encoder_weights": None,
        "training": {},
        "package_version": "",
    }


def _make_module(cfg: dict[str, Any], encoder_weights: str | None) -> torch.nn.Module:
    import segmentation_models_pytorch as smp

    arch = cfg["arch"]
    if arch not in ARCHS:
        raise NanodefectError(f"unknown defect architecture {arch!r}: use one of {ARCHS}")
    kwargs: dict[str, Any] = {"encoder_name": cfg["encoder"], "encoder_weights": encoder_weights,
                              "in_channels": int(cfg.get("in_channels", 1)), "classes": len(cfg["classes"]),
                              "encoder_depth": int(cfg["encoder_depth"])}
    if arch == "Unet":
        dc = cfg.get("decoder_channels") or [256, 128, 64, 32, 16]
        kwargs["decoder_channels"] = tuple(dc)[: int(cfg["encoder_depth"])]
    env = {"HF_HUB_OFFLINE": "1"} if encoder_weights else {}
    with _env(env), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return getattr(smp, arch)(**kwargs)
        except (KeyError, ValueError, AssertionError) as exc:
            raise NanodefectError(f"cannot build {arch} with encoder {cfg['encoder']!r}: {exc}") from exc


def build_defect_model(
    classes: Sequence[str],
    arch: str = "Unet",
    encoder: str = "resnet18",
    *,
    encoder_depth: int = 5,
    decoder_channels: Sequence[int] | None = None,
    encoder_weights: str | None = "auto",
    device: str | torch.device | None = "cpu",
) -> DefectModel:
    """A fresh smp ``arch`` ("FPN" or "Unet") with one grey input and ``len(classes)``
    outputs. ``encoder_weights="auto"`` uses ImageNet weights only when they are already
    cached on this machine (nothing is downloaded), else random initialisation."""
    classes = [str(c) for c in classes]
    if not classes or len(set(classes)) != len(classes) or not all(classes):
        raise NanodefectError(f"defect classes must be distinct non-empty names, got {classes}")
    if arch not in ARCHS:
        raise NanodefectError(f"unknown defect architecture {arch!r}: use one of {ARCHS}")
    weights = None
    if encoder_weights == "auto":
        weights = "imagenet" if imagenet_weights_cached(encoder) else None
    elif encoder_weights:
        weights = encoder_weights
    cfg = _default_config(classes, arch, encoder, encoder_depth, decoder_channels)
    module = _make_module(cfg, weights)
    cfg["encoder_weights"] = weights
    dev = resolve_device(device)
    return DefectModel(module=module.to(dev), classes=classes, config=cfg, device=dev)


def save_defect_model(model: DefectModel, folder: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (``"task": "defects"``) atomically:
    both go to a temporary sibling folder which then replaces ``folder``."""
    from ... import __version__
    from ..segment.model import write_weights_folder

    folder = Path(folder)
    cfg = dict(model.config)
    cfg.update(format=FORMAT, format_version=FORMAT_VERSION, task=TASK, classes=list(model.classes),
               package_version=__version__)
    text = json.dumps(cfg, indent=2, allow_nan=False)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.module.state_dict().items()}
    write_weights_folder(folder, state, text, {"format": FORMAT, "task": TASK}, kind="model")
    model.config = cfg
    return folder


def load_defect_model(folder: str | os.PathLike, device: str | torch.device | None = "auto",
                      precision: str | None = None) -> DefectModel:
    """Load a defect model folder (eval mode). Raises :class:`NanodefectError` for a
    missing/incomplete folder, bad JSON, a model of another task, or weights that do not
    match the architecture.

    ``precision``: "auto" or "fp32", as for particle models (default: the environment
    variable ``NANODEFECT_PRECISION``, else "auto")."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..segment.model import resolve_precision

    precision = resolve_precision(precision)

    folder = Path(folder)
    if not folder.is_dir():
        raise NanodefectError("model folder not found (expected a folder with config.json and model.safetensors)", folder)
    cpath = folder / CONFIG
    if not cpath.exists():
        raise NanodefectError(f"not a model folder: {CONFIG} is missing", folder)
    try:
        cfg = json.loads(cpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NanodefectError(f"config.json is not valid JSON ({exc})", cpath) from exc
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise NanodefectError(f"not a napari-nanodefect model config (expected \"format\": \"{FORMAT}\")", cpath)
    if cfg.get("task") != TASK:
        raise NanodefectError(f"this is a {cfg.get('task', 'particles')!r} model, not a defect model", cpath)
    if int(cfg.get("format_version", 0)) > FORMAT_VERSION:
        raise NanodefectError(f"model format version {cfg['format_version']} is newer than this "
                              f"napari-nanodefect understands ({FORMAT_VERSION}); upgrade the package", cpath)
    classes = cfg.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise NanodefectError("model config has no valid 'classes' list", cpath)
    for key in ("arch", "encoder", "encoder_depth"):
        if key not in cfg:
            raise NanodefectError(f"model config lacks {key!r}", cpath)
    wpath = folder / WEIGHTS
    if not wpath.exists():
        raise NanodefectError(f"not a complete model folder: {WEIGHTS} is missing", folder)
    try:
        state = load_file(str(wpath), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise NanodefectError(f"the weights file is corrupt or truncated ({exc})", wpath) from exc
    module = _make_module(cfg, None)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        msg = str(exc).splitlines()[0]
        raise NanodefectError(f"weights do not match the architecture in config.json ({msg})", wpath) from exc
    dev = resolve_device(device)
    return DefectModel(module=module.to(dev).eval(), classes=list(classes), config=cfg, device=dev,
                       precision=precision)


# ----------------------------------------------------------------------------- loss


def masked_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                dice_weight: float = 1.0, smooth: float = 1.0) -> torch.Tensor:
    """Per-channel BCE + soft Dice, both weighted by ``weight`` ``(B, 1, H, W)`` (1 =
    annotated, 0 = ignore). Ignored pixels get exactly zero gradient."""
    if weight is None:
        weight = torch.ones_like(logits[:, :1])
    w = weight.expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    wsum = w.sum().clamp_min(1.0)
    loss = (bce * w).sum() / wsum
    if dice_weight:
        p = torch.sigmoid(logits) * w
        t = target * w
        dims = (0, 2, 3)
        inter = (p * t).sum(dims)
        dice = (2 * inter + smooth) / (p.sum(dims) + t.sum(dims) + smooth)
        loss = loss + dice_weight * (1 - dice).mean()
    return loss


# ----------------------------------------------------------------------------- augmentation


def _gauss_kernel(sigma: float) -> torch.Tensor:
    r = max(1, math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (1, 1, H, W) tensor with reflection padding."""
    k = _gauss_kernel(sigma)
    r = len(k) // 2
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))


def _augment(img: torch.Tensor, tgt: torch.Tensor, wgt: torch.Tensor, rng: np.random.Generator,
             strength: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augment a batch ``img (B,1,H,W)``, ``tgt (B,C,H,W)``, ``wgt (B,1,H,W)`` in place of
    albumentations: geometry (flips, rot90, affine + grid distortion, reflection padding)
    on all three, intensity (blur/sharpen, contrast/brightness/gamma, noise) on the image."""
    B, _, H, W = img.shape
    C = tgt.shape[1]
    # flips / rot90 (square crops)
    for b in range(B):
        if rng.random() < 0.5:
            img[b], tgt[b], wgt[b] = img[b].flip(-1), tgt[b].flip(-1), wgt[b].flip(-1)
        if rng.random() < 0.5:
            img[b], tgt[b], wgt[b] = img[b].flip(-2), tgt[b].flip(-2), wgt[b].flip(-2)
        k = int(rng.integers(0, 4)) if H == W else 0
        if k:
            img[b], tgt[b], wgt[b] = (torch.rot90(t[b], k, (-2, -1)) for t in (img, tgt, wgt))
    # shift / scale / rotate (+ mild grid distortion), reflection padding
    theta = torch.zeros(B, 2, 3)
    for b in range(B):
        ang = rng.uniform(-np.pi, np.pi) * strength if rng.random() < 0.7 else 0.0
        sc = math.exp(rng.uniform(-0.2, 0.2) * strength)
        sh = rng.uniform(-0.1, 0.1, 2) * strength
        c, s = math.cos(ang) / sc, math.sin(ang) / sc
        theta[b] = torch.tensor([[c, -s, sh[0]], [s, c, sh[1]]], dtype=torch.float32)
    grid = F.affine_grid(theta, [B, 1, H, W], align_corners=False)
    if strength > 0:
        coarse = torch.from_numpy(rng.normal(0, 0.03 * strength, (B, 2, 4, 4)).astype(np.float32))
        grid = grid + F.interpolate(coarse, size=(H, W), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    stack = torch.cat([img, tgt, wgt], 1)
    stack = F.grid_sample(stack, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    img = stack[:, :1].contiguous()
    tgt = (stack[:, 1:1 + C] > 0.5).float()
    wgt = (stack[:, 1 + C:] > 0.5).float()
    # intensity
    for b in range(B):
        x = img[b:b + 1]
        u = rng.random()
        if u < 0.25:
            x = _blur(x, rng.uniform(0.5, 1.5))
        elif u < 0.5:
            x = x + rng.uniform(0.3, 1.0) * (x - _blur(x, 1.0))
        m = x.mean()
        x = (x - m) * math.exp(rng.normal(0, 0.25 * strength)) + m + rng.normal(0, 0.1 * strength)
        if rng.random() < 0.3:
            g = math.exp(rng.normal(0, 0.25))
            x = x.clamp(0, None) ** g
        if rng.random() < 0.5:
            x = x + torch.from_numpy(rng.normal(0, rng.uniform(0, 0.06), x.shape).astype(np.float32))
        img[b:b + 1] = x.clamp(-0.5, 1.5)
    return img, tgt, wgt


# ----------------------------------------------------------------------------- training


def _prepare(images, masks, annotated, classes, cfg, patch):
    low = cfg["normalisation"]["low_percentile"]
    high = cfg["normalisation"]["high_percentile"]
    data = []
    for i, (im, m) in enumerate(zip(images, masks)):
        im = np.asarray(im)
        if im.ndim == 3 and im.shape[-1] in (3, 4):
            im = im[..., :3].mean(-1)
        if im.ndim != 2:
            raise NanodefectError(f"image {i}: expected a 2-D grey image, got shape {im.shape}")
        m = np.asarray(m, bool)
        if m.ndim == 2 and len(classes) == 1:
            m = m[None]
        if m.shape != (len(classes),) + im.shape:
            raise NanodefectError(f"image {i}: masks have shape {m.shape}, expected {(len(classes),) + im.shape}")
        a = np.ones(im.shape, bool) if annotated is None or annotated[i] is None else np.asarray(annotated[i], bool)
        if a.shape != im.shape:
            raise NanodefectError(f"image {i}: annotated area has shape {a.shape}, expected {im.shape}")
        if not a.any():
            continue
        x = normalise(im, *robust_range(im, low, high))
        # images smaller than a patch: pad by reflection (the padding is not annotated)
        ph, pw = max(0, patch - im.shape[0]), max(0, patch - im.shape[1])
        if ph or pw:
            x = np.pad(x, ((0, ph), (0, pw)), mode="reflect")
            m = np.pad(m, ((0, 0), (0, ph), (0, pw)), mode="reflect")
            a = np.pad(a, ((0, ph), (0, pw)))
        ys, xs = np.nonzero(a)
        data.append((x.astype(np.float32), m, a, ys, xs))
    if not data:
        raise NanodefectError("no annotated pixels to train on")
    return data


def _batch(data, n, patch, rng):
    imgs = np.empty((n, 1, patch, patch), np.float32)
    tgts = np.empty((n, data[0][1].shape[0], patch, patch), np.float32)
    wgts = np.empty((n, 1, patch, patch), np.float32)
    weights = np.array([len(d[3]) for d in data], float)
    pick = rng.choice(len(data), size=n, p=weights / weights.sum())
    for j, i in enumerate(pick):
        x, m, a, ys, xs = data[i]
        H, W = x.shape
        k = int(rng.integers(len(ys)))  # centre on an annotated pixel
        y0 = int(np.clip(ys[k] - patch // 2 + rng.integers(-patch // 4, patch // 4 + 1), 0, H - patch))
        x0 = int(np.clip(xs[k] - patch // 2 + rng.integers(-patch // 4, patch // 4 + 1), 0, W - patch))
        imgs[j, 0] = x[y0:y0 + patch, x0:x0 + patch]
        tgts[j] = m[:, y0:y0 + patch, x0:x0 + patch]
        wgts[j, 0] = a[y0:y0 + patch, x0:x0 + patch]
    return torch.from_numpy(imgs), torch.from_numpy(tgts), torch.from_numpy(wgts)


def train_defects(
    images: list[np.ndarray],
    masks: list[np.ndarray],
    classes: Sequence[str],
    *,
    annotated: list[np.ndarray | None] | None = None,
    epochs: int | None = None,
    time_budget_s: float | None = 60,
    patch: int = 128,
    batch_size: int = 8,
    seed: int = 0,
    lr: float = 1e-3,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    model: DefectModel | None = None,
    augment: float = 1.0,
    arch: str = "Unet",
    encoder: str = "resnet18",
    pixel_size_nm: float | None = None,
    line_width_px: float | None = None,
) -> tuple[DefectModel, dict[str, Any]]:
    """Train (or go on training ``model``) on ``images`` with ``(C, H, W)`` bool ``masks``.

    ``annotated`` (one bool ``(H, W)`` per image, None = all) marks the pixels that were
    annotated; the loss ignores the others and patches are centred on annotated pixels.
    An epoch is as many ``patch``² crops as cover the annotated area once. With
    ``epochs`` the run is exactly that many epochs (reproducible for a seed, whatever the
    machine load; ``time_budget_s`` is then ignored); without, it trains until
    ``time_budget_s`` has passed. The learning rate decays on a cosine to 5 %.
    ``should_stop()`` returning True ends training early (the model so far is kept).
    Returns the model (eval mode) and a dict of training facts.
    """
    classes = [str(c) for c in classes]
    if len(images) != len(masks) or not images:
        raise NanodefectError("give as many masks as images (and at least one image)")
    if annotated is not None and len(annotated) != len(images):
        raise NanodefectError("give one annotated area per image (or none)")
    if epochs is None and time_budget_s is None:
        raise NanodefectError("give epochs or a time budget")
    if model is None:
        model = build_defect_model(classes, arch=arch, encoder=encoder)
    elif list(model.classes) != classes:
        raise NanodefectError(f"the model's classes {model.classes} differ from {classes}")
    mult = 2 ** int(model.config.get("encoder_depth", 5))
    patch = max(mult, round(patch / mult) * mult)
    data = _prepare(images, masks, annotated, classes, model.config, patch)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    dev = model.device
    module = model.module.to(dev).train()
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=1e-4)
    n_px = sum(len(d[3]) for d in data)
    steps_per_epoch = max(1, math.ceil(n_px / (patch * patch) / batch_size))
    total = steps_per_epoch * int(epochs) if epochs is not None else None
    t0 = time.perf_counter()
    losses: list[float] = []
    step = 0
    stopped = False
    while True:
        elapsed = time.perf_counter() - t0
        if total is not None:
            if step >= total:
                break
            frac = step / total
        else:
            if elapsed >= float(time_budget_s):
                break
            frac = min(1.0, elapsed / float(time_budget_s))
        if should_stop is not None and should_stop():
            stopped = True
            break
        for g in opt.param_groups:
            g["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        img, tgt, wgt = _batch(data, batch_size, patch, rng)
        if augment > 0:
            img, tgt, wgt = _augment(img, tgt, wgt, rng, augment)
        img, tgt, wgt = img.to(dev), tgt.to(dev), wgt.to(dev)
        loss = masked_loss(module(img), tgt, wgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        if progress is not None:
            progress(step, total if total is not None else 0)
    module.eval()
    info = {
        "steps": step,
        "epochs": step / steps_per_epoch,
        "steps_per_epoch": steps_per_epoch,
        "patch": patch,
        "batch_size": batch_size,
        "seconds": time.perf_counter() - t0,
        "final_loss": float(np.mean(losses[-max(1, steps_per_epoch):])) if losses else None,
        "losses": losses,
        "stopped": stopped,
        "seed": seed,
        "lr": lr,
        "augment": augment,
    }
    cfg = model.config
    cfg["classes"] = classes
    if pixel_size_nm is not None:
        cfg["pixel_size_nm"] = float(pixel_size_nm)
    if line_width_px is not None:
        cfg["line_width_px"] = float(line_width_px)
        if pixel_size_nm:
            cfg["line_width_nm"] = float(line_width_px) * float(pixel_size_nm)
    cfg["training"] = {k: v for k, v in info.items() if k != "losses"}
    return model, info


# ----------------------------------------------------------------------------- inference


def _blend_window(n: int, overlap: int) -> np.ndarray:
    """1-D weight: ~0 on the outer quarter of the overlap (where the network lacks
    context), a raised-cosine ramp over the rest, 1 inside."""
    w = np.ones(n, np.float32)
    if overlap > 0:
        o = min(overlap, n // 2)
        m = o // 4
        r = o - m
        ramp = np.zeros(o, np.float32)
        t = (np.arange(r, dtype=np.float32) + 0.5) / r
        ramp[m:] = 0.5 - 0.5 * np.cos(np.pi * t)
        w[:o] = ramp
        w[n - o:] = ramp[::-1]
    return np.maximum(w, 1e-3)


@torch.inference_mode()
def predict_defects(model: DefectModel, image: np.ndarray, *, tile: int | None = 512, overlap: int | None = 64,
                    batch_size: int = 1, progress: ProgressFn | None = None) -> np.ndarray:
    """Per-class probabilities ``(C, H, W)`` uint8 (x255) of a 2-D image.

    The image is normalised by its robust range, cut into overlapping tiles of at most
    ``tile`` px (spread evenly, at least ``overlap`` px shared), each tile padded by
    reflection to a multiple of the network's stride, and the tiles blended with a
    window that is ~0 on the outer quarter of the overlap and ramps smoothly to 1.

    Memory is bounded: the float accumulator holds one band of tile rows at a time
    (``C x (2 tile) x W``), finished rows go straight into the uint8 result.

    The network runs channels-last, in the reduced precision of
    :meth:`DefectModel.autocast_dtype` (bfloat16 on CPUs with native bf16, float16 on
    CUDA; ``model.precision = "fp32"`` keeps float32); the blending is float32.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = image[..., :3].mean(-1)
    if image.ndim != 2:
        raise NanodefectError(f"expected a 2-D grey image, got shape {image.shape}")
    cfg = model.config
    H, W = image.shape
    C = len(model.classes)
    T = int(tile or cfg.get("tile_size", 512))
    O = int(overlap if overlap is not None else cfg.get("tile_overlap", 64))
    O = max(0, min(O, T // 2))
    (ys, th), (xs, tw) = _even_tiles(H, T, O), _even_tiles(W, T, O)
    win = np.outer(_blend_window(th, O if len(ys) > 1 else 0), _blend_window(tw, O if len(xs) > 1 else 0))
    nrm = cfg.get("normalisation", {})
    lo, hi = robust_range(image, nrm.get("low_percentile", 0.5), nrm.get("high_percentile", 99.5))
    mult = 2 ** int(cfg.get("encoder_depth", 5))
    ph, pw = (-th) % mult, (-tw) % mult
    out = np.empty((C, H, W), np.uint8)
    # rolling band: rows [b0, b0 + len) of the accumulator; rows above the next tile row are final
    acc = np.zeros((C, 0, W), np.float32)
    wsum = np.zeros((0, W), np.float32)
    b0 = 0

    def flush(upto: int) -> None:
        nonlocal acc, wsum, b0
        n = upto - b0
        if n <= 0:
            return
        q = acc[:, :n] / np.maximum(wsum[:n], 1e-12)[None]
        out[:, b0:upto] = np.clip(q * 255 + 0.5, 0, 255).astype(np.uint8)
        acc, wsum, b0 = acc[:, n:], wsum[n:], upto

    # channels-last is ~1.5x faster for these convolutions on CPU (and fine on CUDA); the
    # conversion is in place and harmless for later training
    module = model.module.eval().to(memory_format=torch.channels_last)
    dev = model.device
    low = model.autocast_dtype()
    jobs = [(y, x) for y in ys for x in xs]
    done = 0
    step = max(1, batch_size)
    for y in ys:
        flush(y)
        need = y + th - b0
        if need > wsum.shape[0]:
            extra = need - wsum.shape[0]
            acc = np.concatenate([acc, np.zeros((C, extra, W), np.float32)], axis=1)
            wsum = np.concatenate([wsum, np.zeros((extra, W), np.float32)], axis=0)
        row = [(y, x) for x in xs]
        for start in range(0, len(row), step):
            part = row[start:start + step]
            tiles = [normalise(image[y:y + th, x:x + tw], lo, hi) for _, x in part]
            if ph or pw:
                tiles = [np.pad(t, ((0, ph), (0, pw)), mode="reflect" if min(th, tw) > max(ph, pw) else "symmetric")
                         for t in tiles]
            arr = torch.from_numpy(np.stack(tiles)[:, None]).to(dev).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=dev.type, dtype=low or torch.float32, enabled=low is not None):
                logits = module(arr)
            prob = torch.sigmoid(logits.float())[:, :, :th, :tw].contiguous().cpu().numpy()
            r = y - b0
            for (_, x), p in zip(part, prob):
                acc[:, r:r + th, x:x + tw] += p * win[None]
                wsum[r:r + th, x:x + tw] += win
            done += len(part)
            if progress is not None:
                progress(done, len(jobs))
    flush(H)
    return out


def predict_defects_scaled(model: DefectModel, image: np.ndarray, pixel_size_nm: float | None = None,
                           **kwargs) -> tuple[np.ndarray, float]:
    """:func:`predict_defects` at the model's training scale.

    When both the model's training pixel size (``config["pixel_size_nm"]``) and
    ``pixel_size_nm`` are known and differ by more than 2 %, the image is resampled so
    that defects appear as large as in training, and the probabilities are resampled
    back to the image's own grid. Returns ``(probabilities, scale)`` with ``scale`` the
    network px per image px (1.0 when not rescaled).
    """
    from ..segment.data import _resize

    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = image[..., :3].mean(-1)
    trained = model.config.get("pixel_size_nm")
    scale = 1.0
    if trained and pixel_size_nm and abs(float(pixel_size_nm) / float(trained) - 1.0) > 0.02:
        scale = float(pixel_size_nm) / float(trained)
    if scale == 1.0:
        return predict_defects(model, image, **kwargs), 1.0
    H, W = image.shape
    shape = (max(8, round(H * scale)), max(8, round(W * scale)))
    small = _resize(image.astype(np.float32), shape, "bilinear")
    prob = predict_defects(model, small, **kwargs)
    back = np.stack([np.clip(_resize(p.astype(np.float32), (H, W), "bilinear") + 0.5, 0, 255).astype(np.uint8)
                     for p in prob])
    return back, scale


# ----------------------------------------------------------------------------- statistics


def defect_statistics(
    prob: np.ndarray,
    classes: Sequence[str],
    pixel_size_nm: float = 1.0,
    *,
    threshold: float = 0.5,
    point_classes: Sequence[str] = ("point_defect",),
    prune_nm: float | None = None,
    valid_area_px: float | np.ndarray | None = None,
    min_area_px: int = 0,
    low_threshold: float | Sequence[float | None] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Threshold per-class probabilities and measure them.

    ``prob``: ``(C, H, W)`` uint8 (x255, as from :func:`predict_defects`), float in
    [0, 1], or bool masks. With ``low_threshold`` (one value, or one per class, None =
    plain threshold for that class) the masks are hysteresis thresholds: pixels above
    ``low_threshold`` count when they connect to pixels above ``threshold``, which keeps
    the faint stretches of a line whose other parts are certain (see
    :func:`thresholds_from_config` for the values a model was calibrated with). Line/area classes are measured with
    :func:`~napari_nanodefect.core.measure.skeleton.skeleton_table` (one row per defect:
    length, branches, junctions, ...); point classes (``point_classes``) are counted as
    8-connected components (one row each; ``length_nm`` NaN). Components smaller than
    ``min_area_px`` are dropped first.

    Returns the table (``skeleton_table`` columns) and a summary: ``skeleton_table``'s
    (totals over the line classes; ``per_class`` for every class, point classes with
    ``n_defects`` and ``density_per_um2``), plus ``threshold`` and ``point_counts``.
    """
    from ..measure.skeleton import COLUMNS, skeleton_table

    classes = [str(c) for c in classes]
    p = np.asarray(prob)
    if p.ndim == 2 and len(classes) == 1:
        p = p[None]
    if p.ndim != 3 or p.shape[0] != len(classes):
        raise ValueError(f"expected a ({len(classes)}, H, W) probability stack, got shape {p.shape}")
    masks = threshold_masks(p, threshold, low_threshold)
    if min_area_px > 0:
        for c in range(len(masks)):
            lab, n = ndi.label(masks[c], structure=np.ones((3, 3), bool))
            if n:
                sizes = np.bincount(lab.ravel())
                keep = sizes >= min_area_px
                keep[0] = False
                masks[c] = keep[lab]
    H, W = p.shape[1:]
    points = [i for i, c in enumerate(classes) if c in set(point_classes)]
    lines = [i for i in range(len(classes)) if i not in points]
    if lines:
        table, summary = skeleton_table(masks[lines], pixel_size_nm, prune_nm=prune_nm,
                                        class_names=[classes[i] for i in lines], valid_area_px=valid_area_px)
    else:
        table, summary = skeleton_table(np.zeros((1, H, W), bool), pixel_size_nm, prune_nm=prune_nm,
                                        class_names=["_none"], valid_area_px=valid_area_px)
        summary["per_class"] = {}
        table = table.iloc[0:0]
    area_um2 = summary["analysed_area_um2"]
    ps = float(pixel_size_nm)
    rows = []
    counts: dict[str, int] = {}
    for i in points:
        lab, n = ndi.label(masks[i], structure=np.ones((3, 3), bool))
        counts[classes[i]] = int(n)
        summary["per_class"][classes[i]] = {"n_defects": int(n), "density_per_um2": n / area_um2}
        if not n:
            continue
        idx = np.arange(1, n + 1)
        area = np.asarray(ndi.sum_labels(masks[i], lab, idx), float)
        cents = ndi.center_of_mass(masks[i], lab, idx)
        border = np.zeros(n + 1, bool)
        for edge in (lab[0], lab[-1], lab[:, 0], lab[:, -1]):
            border[edge] = True
        for k in range(n):
            rows.append({"class": classes[i], "length_nm": np.nan, "length_px": np.nan, "branches": 0,
                         "junctions": 0, "end_points": 0, "mean_width_nm": np.nan,
                         "centroid_y_px": float(cents[k][0]), "centroid_x_px": float(cents[k][1]),
                         "area_nm2": float(area[k] * ps * ps), "area_px": int(area[k]),
                         "touches_border": bool(border[k + 1])})
    if rows:
        extra = pd.DataFrame(rows, columns=COLUMNS[1:])
        table = pd.concat([table.drop(columns="defect_id"), extra], ignore_index=True)
        table.insert(0, "defect_id", np.arange(1, len(table) + 1, dtype=np.int64))
    summary["point_counts"] = counts
    summary["point_density_per_um2"] = {k: v / area_um2 for k, v in counts.items()}
    summary["threshold"] = float(threshold)
    summary["low_threshold"] = _lows(low_threshold, len(classes))
    summary["classes"] = classes
    return table, summary


def _lows(low_threshold, n: int) -> list[float | None]:
    if low_threshold is None:
        return [None] * n
    if np.ndim(low_threshold) == 0:
        return [float(low_threshold)] * n
    lows = [None if v is None else float(v) for v in low_threshold]
    if len(lows) != n:
        raise ValueError(f"give one low threshold per class ({n}), got {len(lows)}")
    return lows


def threshold_masks(prob: np.ndarray, threshold: float = 0.5,
                    low_threshold: float | Sequence[float | None] | None = None) -> np.ndarray:
    """Bool ``(C, H, W)`` masks of a probability stack (uint8 x255, float in [0, 1] or
    bool): ``>= threshold``, or hysteresis between ``low_threshold`` and ``threshold``
    (8-connected) for the classes that have a low threshold."""
    p = np.asarray(prob)
    if p.dtype == bool:
        return p.copy()
    scale = 255.0 if p.dtype == np.uint8 else 1.0
    masks = p >= threshold * scale
    for c, low in enumerate(_lows(low_threshold, p.shape[0])):
        if low is None or low >= threshold:
            continue
        weak = p[c] >= low * scale
        lab, n = ndi.label(weak, structure=np.ones((3, 3), bool))
        if n:
            keep = np.zeros(n + 1, bool)
            keep[np.unique(lab[masks[c]])] = True
            keep[0] = False
            masks[c] = keep[lab]
    return masks


def thresholds_from_config(config: dict[str, Any], classes: Sequence[str]) -> tuple[float, list[float | None]]:
    """``(threshold, low thresholds per class)`` stored in a model's config by
    :func:`calibrate_thresholds` (0.5 and no hysteresis when none were stored)."""
    t = config.get("thresholds") or {}
    high = float(t.get("threshold", 0.5))
    low = t.get("low_threshold") or {}
    return high, [None if low.get(c) is None else float(low[c]) for c in classes]


def calibrate_thresholds(
    model: DefectModel,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    threshold: float = 0.5,
    candidates: Sequence[float] = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5),
    point_classes: Sequence[str] = ("point_defect",),
    min_area_px: int = 10,
) -> dict[str, Any]:
    """Choose, per line/area class, the hysteresis low threshold whose skeleton length
    over ``images`` comes closest to that of the true ``masks`` (``(C, H, W)`` bool each),
    and store it in ``model.config["thresholds"]`` (used by ``nanodefect predict`` and
    the napari dock). Use annotated images the model was not trained on. Returns the
    choice with the pooled relative length error of every candidate."""
    from ..measure.skeleton import skeleton_table

    classes = list(model.classes)
    if len(images) != len(masks) or not images:
        raise NanodefectError("give as many true masks as images (and at least one)")
    probs = [predict_defects(model, im) for im in images]
    lows: dict[str, float | None] = {}
    report: dict[str, Any] = {}
    for c, name in enumerate(classes):
        if name in set(point_classes):
            lows[name] = None
            continue
        true_len = sum(skeleton_table(np.asarray(m[c])[None], 1.0, class_names=[name])[1]["total_length_nm"]
                       for m in masks)
        if true_len <= 0:
            lows[name] = None
            continue
        errors = {}
        for low in candidates:
            got = 0.0
            for p in probs:
                m = threshold_masks(p[c:c + 1], threshold, [low])[0]
                if min_area_px:
                    lab, n = ndi.label(m, structure=np.ones((3, 3), bool))
                    if n:
                        sizes = np.bincount(lab.ravel())
                        keep = sizes >= min_area_px
                        keep[0] = False
                        m = keep[lab]
                got += skeleton_table(m[None], 1.0, class_names=[name])[1]["total_length_nm"]
            errors[float(low)] = got / true_len - 1
        best = min(errors, key=lambda k: (abs(errors[k]), -k))
        lows[name] = None if best >= threshold else best
        report[name] = {"chosen_low_threshold": lows[name], "length_error": errors}
    model.config["thresholds"] = {"threshold": float(threshold), "low_threshold": lows,
                                  "calibrated_on_images": len(images)}
    return {"low_threshold": lows, "threshold": float(threshold), "classes": report}
