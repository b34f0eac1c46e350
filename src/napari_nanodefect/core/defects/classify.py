"""Ordered-vs-disordered (or any user classes) image / patch classifier.

After Boiko et al. (2021): a small CNN encoder from timm (random init, no downloads)
with global average pooling and a linear head, trained on random patches of whole
images labelled by class (from folders or tags). It gives per-class probabilities for
a whole image (mean over patches) and a map of the probability of class 1 (e.g.
``"ordered"``) per patch position.

Models are stored as ``model.safetensors`` + ``config.json`` (never pickle), written
atomically like :func:`napari_nanodefect.core.segment.model.save_model`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import NanodefectError
from ..segment.predict import normalise, robust_range
from .simulate import ordering_sample

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "napari-nanodefect-classifier"

__all__ = [
    "OrderClassifier",
    "build_classifier",
    "train_classifier",
    "save_classifier",
    "load_classifier",
    "simulated_dataset",
    "roc_auc",
    "pca",
]


# -- preprocessing ---------------------------------------------------------------------


def _prepare(image: np.ndarray) -> np.ndarray:
    """2-D float32 image, robustly scaled to about [0, 1] then centred (``(x-0.5)/0.25``)."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        img = img[..., :3].astype(np.float32).mean(-1)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D (grey) image, got shape {img.shape}")
    lo, hi = robust_range(img)
    return (normalise(img, lo, hi) - 0.5) * 4.0


def _pad_to(img: np.ndarray, patch: int) -> np.ndarray:
    H, W = img.shape
    ph, pw = max(0, patch - H), max(0, patch - W)
    if ph or pw:
        img = np.pad(img, ((0, ph), (0, pw)), mode="reflect" if min(H, W) > 1 else "edge")
    return img


def _starts(length: int, patch: int, stride: int) -> list[int]:
    s = list(range(0, max(length - patch, 0) + 1, stride))
    return s


# -- model -----------------------------------------------------------------------------


@dataclass
class OrderClassifier:
    """A trained (or freshly built) patch classifier.

    ``module`` maps ``(N, 1, patch, patch)`` normalised patches to ``len(classes)``
    logits; ``config`` holds everything needed to rebuild it (encoder name, classes,
    patch size).
    """

    module: torch.nn.Module
    classes: list[str]
    patch: int
    config: dict = field(default_factory=dict)

    def _patch_probs(self, image: np.ndarray, stride: int, batch: int = 64) -> tuple[np.ndarray, tuple[int, int]]:
        img = _pad_to(_prepare(image), self.patch)
        H, W = img.shape
        p = self.patch
        rs, cs = _starts(H, p, stride), _starts(W, p, stride)
        tiles = np.stack([img[r : r + p, c : c + p] for r in rs for c in cs])[:, None]
        self.module.eval()
        out = []
        dev = next(self.module.parameters()).device
        with torch.inference_mode():
            for i in range(0, len(tiles), batch):
                x = torch.from_numpy(np.ascontiguousarray(tiles[i : i + batch])).to(dev)
                out.append(torch.softmax(self.module(x).float(), dim=1).cpu().numpy())
        return np.concatenate(out), (len(rs), len(cs))

    def predict_proba(self, image: np.ndarray, stride: int | None = None) -> np.ndarray:
        """Per-class probabilities of the whole image: the mean over its patches
        (non-overlapping grid by default)."""
        probs, _ = self._patch_probs(image, stride or self.patch)
        return probs.mean(0)

    def probability_map(self, image: np.ndarray, stride: int | None = None) -> np.ndarray:
        """``(H', W')`` map of P(``classes[1]``) per patch position.

        Patch ``(i, j)`` covers rows ``i*stride : i*stride+patch`` and columns
        ``j*stride : j*stride+patch`` (default ``stride = patch // 2``), so
        ``H' = (H - patch) // stride + 1`` (1 for images smaller than the patch).
        """
        stride = int(stride or max(1, self.patch // 2))
        if stride < 1:
            raise ValueError("stride must be >= 1")
        probs, (nh, nw) = self._patch_probs(image, stride)
        k = 1 if len(self.classes) > 1 else 0
        return probs[:, k].reshape(nh, nw).astype(np.float32)


    def saliency(self, image: np.ndarray, target: int = 1, stride: int | None = None) -> np.ndarray:
        """Gradient saliency (Simonyan et al. 2014) of the class ``target`` logit: ``|d logit /
        d pixel|`` of every patch (non-overlapping grid by default), averaged where patches
        overlap; a float32 ``(H, W)`` map normalised to a maximum of 1 (for a napari layer).
        """
        img = _prepare(image)
        H0, W0 = img.shape
        img = _pad_to(img, self.patch)
        H, W = img.shape
        p = self.patch
        stride = int(stride or p)
        rs, cs = _starts(H, p, stride), _starts(W, p, stride)
        if rs[-1] + p < H:
            rs.append(H - p)
        if cs[-1] + p < W:
            cs.append(W - p)
        acc = np.zeros((H, W), np.float32)
        cnt = np.zeros((H, W), np.float32)
        dev = next(self.module.parameters()).device
        self.module.eval()
        k = min(int(target), len(self.classes) - 1)
        for r in rs:
            for c in cs:
                x = torch.from_numpy(np.ascontiguousarray(img[None, None, r : r + p, c : c + p])).to(dev)
                x.requires_grad_(True)
                self.module.zero_grad(set_to_none=True)
                self.module(x)[0, k].backward()
                acc[r : r + p, c : c + p] += x.grad[0, 0].abs().cpu().numpy()
                cnt[r : r + p, c : c + p] += 1
        sal = (acc / np.maximum(cnt, 1))[:H0, :W0]
        top = float(sal.max())
        return sal / top if top > 0 else sal

    def embeddings(self, image: np.ndarray, stride: int | None = None, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Pooled encoder features of every patch: ``(N, D)`` float32 and the ``(N, 2)``
        (row, col) centres of the patches in image pixels (Boiko et al. Fig. 8)."""
        img = _pad_to(_prepare(image), self.patch)
        p = self.patch
        stride = int(stride or max(1, p // 2))
        rs, cs = _starts(img.shape[0], p, stride), _starts(img.shape[1], p, stride)
        tiles = np.stack([img[r : r + p, c : c + p] for r in rs for c in cs])[:, None]
        centres = np.array([(r + p / 2, c + p / 2) for r in rs for c in cs], np.float32)
        dev = next(self.module.parameters()).device
        self.module.eval()
        out = []
        with torch.inference_mode():
            for i in range(0, len(tiles), batch):
                x = torch.from_numpy(np.ascontiguousarray(tiles[i : i + batch])).to(dev)
                f = self.module.forward_head(self.module.forward_features(x), pre_logits=True)
                out.append(f.float().cpu().numpy())
        return np.concatenate(out), centres


def pca(features: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Principal components of ``(N, D)`` features: the ``(N, k)`` scores and the fraction
    of variance each of the ``k`` components explains (SVD of the centred data)."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"PCA needs (N >= 2, D) features, got shape {x.shape}")
    x = x - x.mean(axis=0)
    u, sv, _ = np.linalg.svd(x, full_matrices=False)
    k = min(k, len(sv))
    var = sv**2
    return (u[:, :k] * sv[:k]).astype(np.float32), (var[:k] / max(var.sum(), 1e-30)).astype(np.float32)


def _make_module(encoder: str, n_classes: int) -> torch.nn.Module:
    import timm

    try:
        return timm.create_model(encoder, pretrained=False, num_classes=n_classes, in_chans=1, global_pool="avg")
    except Exception as exc:  # unknown name etc.
        raise NanodefectError(f"cannot build classifier encoder {encoder!r} ({exc})") from exc


def build_classifier(classes, encoder: str = "resnet10t", patch: int = 128) -> OrderClassifier:
    """A timm encoder (random init, 1 input channel) + global average pooling + linear head.

    The default ``"resnet10t"`` trains ~0.1 s per step on one CPU thread (resnet18 was ~40x slower here).
    """
    classes = [str(c) for c in classes]
    if len(classes) < 2:
        raise ValueError("need at least two classes")
    patch = int(patch)
    if patch < 16:
        raise ValueError("patch must be >= 16")
    module = _make_module(encoder, len(classes))
    config = {"format": FORMAT, "encoder": encoder, "classes": classes, "patch": patch, "in_chans": 1,
              "normalisation": "robust 0.5-99.5 % -> (x - 0.5) * 4"}
    return OrderClassifier(module, classes, patch, config)


# -- training --------------------------------------------------------------------------


def _augment(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    t = np.rot90(tile, int(rng.integers(4)))
    if rng.random() < 0.5:
        t = t[:, ::-1]
    # contrast / brightness jitter (on the centred scale) and a little gamma-like bend
    t = t * rng.uniform(0.75, 1.3) + rng.uniform(-0.4, 0.4)
    if rng.random() < 0.3:
        t = t + rng.normal(0, rng.uniform(0.02, 0.2), t.shape).astype(np.float32)
    return np.ascontiguousarray(t, dtype=np.float32)


def train_classifier(
    images: list[np.ndarray],
    targets: list[int],
    classes,
    *,
    epochs: int | None = None,
    time_budget_s: float | None = 30,
    patch: int = 128,
    seed: int = 0,
    progress: Callable[[dict], object] | None = None,
    encoder: str = "resnet10t",
    batch_size: int = 32,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    patches_per_image: int = 4,
) -> tuple[OrderClassifier, dict]:
    """Train a classifier on random augmented patches of whole labelled images.

    Each step draws ``batch_size`` random (image, patch) pairs, class-balanced, with
    random rot90 / flips and contrast jitter; AdamW with cosine decay. One epoch is
    ``len(images) * patches_per_image`` patches. Training stops after ``epochs`` (if
    given) or when ``time_budget_s`` runs out, whichever comes first (at least one
    step). ``progress(dict)`` is called after every step; returning ``False`` stops.

    Returns the classifier and a history ``{"loss": [...], "acc": [...], "steps",
    "epochs", "seconds", "n_images"}``.
    """
    if len(images) != len(targets) or not images:
        raise ValueError("need as many targets as images (and at least one image)")
    classes = [str(c) for c in classes]
    targets = np.asarray(targets, int)
    if targets.min() < 0 or targets.max() >= len(classes):
        raise ValueError("targets must index into classes")
    if epochs is None and time_budget_s is None:
        raise ValueError("give epochs or time_budget_s")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    clf = build_classifier(classes, encoder=encoder, patch=patch)
    data = [_pad_to(_prepare(im), patch) for im in images]
    by_class = [np.flatnonzero(targets == k) for k in range(len(classes))]
    by_class = [b for b in by_class if len(b)]
    per_epoch = len(images) * patches_per_image
    total_steps = None if epochs is None else max(1, int(np.ceil(epochs * per_epoch / batch_size)))
    # for the learning-rate schedule without a step count: estimate from the budget later
    module = clf.module
    module.train()
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    hist = {"loss": [], "acc": [], "steps": 0, "epochs": 0.0, "seconds": 0.0, "n_images": len(images)}
    t0 = time.perf_counter()
    step = 0
    while True:
        # cosine schedule over steps (known) or over elapsed time fraction (budget)
        if total_steps is not None:
            frac = step / total_steps
        else:
            frac = (time.perf_counter() - t0) / time_budget_s
        if time_budget_s is not None:
            frac = max(frac, (time.perf_counter() - t0) / time_budget_s)
        for g in opt.param_groups:
            g["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(frac, 1.0))))
        xs, ys = [], []
        for _ in range(batch_size):
            cls_idx = by_class[int(rng.integers(len(by_class)))]
            i = int(cls_idx[rng.integers(len(cls_idx))])
            img = data[i]
            r = int(rng.integers(img.shape[0] - patch + 1))
            c = int(rng.integers(img.shape[1] - patch + 1))
            xs.append(_augment(img[r : r + patch, c : c + patch], rng))
            ys.append(targets[i])
        x = torch.from_numpy(np.stack(xs)[:, None])
        y = torch.from_numpy(np.asarray(ys, np.int64))
        logits = module(x)
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        hist["loss"].append(float(loss.detach()))
        hist["acc"].append(float((logits.argmax(1) == y).float().mean()))
        elapsed = time.perf_counter() - t0
        hist.update(steps=step, epochs=step * batch_size / per_epoch, seconds=elapsed)
        if progress is not None and progress(dict(step=step, loss=hist["loss"][-1], seconds=elapsed)) is False:
            break
        if total_steps is not None and step >= total_steps:
            break
        if time_budget_s is not None and elapsed >= time_budget_s:
            break
    module.eval()
    clf.config["trained"] = {"steps": step, "seconds": round(hist["seconds"], 2), "n_images": len(images),
                             "batch_size": batch_size, "seed": seed}
    return clf, hist


# -- persistence -----------------------------------------------------------------------


def save_classifier(clf: OrderClassifier, folder: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``folder`` atomically
    (temporary sibling folder, then rename; refuses to replace a non-model folder)."""
    from ... import __version__
    from ..segment.model import write_weights_folder

    folder = Path(folder)
    cfg = dict(clf.config)
    cfg.update(format=FORMAT, classes=list(clf.classes), patch=int(clf.patch), package_version=__version__)
    state = {k: v.detach().to("cpu").contiguous() for k, v in clf.module.state_dict().items()}
    return write_weights_folder(folder, state, json.dumps(cfg, indent=2), {"format": FORMAT}, kind="classifier")


def load_classifier(folder: str | os.PathLike, device: str | torch.device = "cpu") -> OrderClassifier:
    """Load a classifier written by :func:`save_classifier`; raises
    :class:`~napari_nanodefect.core.errors.NanodefectError` on a wrong folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path = folder / CONFIG
    if not folder.is_dir() or not cfg_path.is_file():
        raise NanodefectError("not a classifier folder (expected config.json and model.safetensors)", folder)
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NanodefectError(f"config.json is not valid JSON ({exc})", cfg_path) from exc
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise NanodefectError(f"config.json is not a {FORMAT} config", cfg_path)
    try:
        classes, patch, encoder = list(cfg["classes"]), int(cfg["patch"]), str(cfg["encoder"])
    except (KeyError, TypeError, ValueError) as exc:
        raise NanodefectError(f"config.json lacks a valid entry ({exc})", cfg_path) from exc
    wpath = folder / WEIGHTS
    if not wpath.is_file():
        raise NanodefectError("weights file model.safetensors is missing", folder)
    clf = build_classifier(classes, encoder=encoder, patch=patch)
    try:
        state = load_file(str(wpath))
    except (SafetensorError, OSError) as exc:
        raise NanodefectError(f"cannot read weights ({exc})", wpath) from exc
    try:
        clf.module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise NanodefectError(f"weights do not match the architecture in config.json ({exc})", wpath) from exc
    clf.module.to(device).eval()
    clf.config = cfg
    return clf


# -- data and metrics ------------------------------------------------------------------


def simulated_dataset(n: int, shape=(256, 256), seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """``n`` simulated HAADF images from :func:`ordering_sample`, alternating ordered
    (target 1, particles on line defects) and random (target 0); ``n // 2`` random ones
    when ``n`` is odd. Each image has its own child seed of ``seed``."""
    seeds = np.random.SeedSequence(seed).generate_state(max(n, 1))
    images, targets = [], []
    for i in range(n):
        ordered = i % 2 == 0
        img, *_ = ordering_sample(shape, ordered=ordered, seed=int(seeds[i]))
        images.append(img)
        targets.append(int(ordered))
    return images, targets


def roc_auc(scores, targets) -> float:
    """ROC AUC as the Mann–Whitney statistic: P(score of a positive > score of a
    negative), ties counted 1/2. ``targets`` are truthy for positives."""
    from scipy.stats import rankdata

    s = np.asarray(scores, float).ravel()
    t = np.asarray(targets).ravel().astype(bool)
    if s.shape != t.shape:
        raise ValueError("scores and targets differ in length")
    n1, n0 = int(t.sum()), int((~t).sum())
    if n1 == 0 or n0 == 0:
        raise ValueError("roc_auc needs both positive and negative targets")
    ranks = rankdata(s)  # average ranks for ties
    return float((ranks[t].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
