"""Few-shot training: fine-tune (or train) a particle model on annotated crops.

``train()`` takes LabelMe/COCO files (or :class:`AnnotationSet` objects with their
images), builds scale-normalised training regions (:mod:`.data`), and runs a CPU/CUDA
loop with a time budget or a number of epochs, validation on held-out cells of the
crops, early stopping, a progress callback and cancellation that keeps the best
checkpoint. A run that ends by itself (budget used up, or early stopping) keeps its
final weights (see :func:`fit`). The result is saved as a model folder (safetensors + config.json).
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ... import __version__
from ..annotations import AnnotationSet, load_annotations
from ..errors import NanodefectError
from .config import ModelConfig
from .data import PatchSampler, Region, build_regions
from .instances import extract_instances
from .predict import support_background
from .rehearsal import DEFAULT_REHEARSAL, REHEARSAL_SHARE, synthetic_regions
from .model import LoadedModel, adapt_state, build_model, default_model_dir, load_model, resolve_device, save_model


#: seconds of a :func:`train` time budget kept back for the last validation and saving
FINISH_RESERVE_S = 1.0


@dataclass
class TrainProgress:
    """One progress report (after each validation)."""

    epoch: float
    iteration: int
    train_loss: float
    val_loss: float | None
    val_f1: float | None
    best_val_loss: float | None
    elapsed_s: float
    eta_s: float | None
    improved: bool = False


@dataclass
class TrainResult:
    model: LoadedModel
    path: Path | None
    history: list[TrainProgress]
    summary: dict[str, Any]
    cancelled: bool = False


@dataclass
class TrainingImage:
    """An annotation set with its image plane and pixel size (nm or None)."""

    annotations: AnnotationSet
    image: np.ndarray
    pixel_size_nm: float | None = None


# ----------------------------------------------------------------------------- inputs

def load_training_images(sources: Iterable[Any], images: str | os.PathLike | None = None) -> list[TrainingImage]:
    """LabelMe/COCO paths, :class:`AnnotationSet` or :class:`TrainingImage` -> training images."""
    from ..io import read_image

    out: list[TrainingImage] = []
    for src in sources:
        if isinstance(src, TrainingImage):
            out.append(src)
            continue
        sets = [src] if isinstance(src, AnnotationSet) else load_annotations(src, images=images)
        for aset in sets:
            path = aset.resolve_image_path()
            if path is not None and path.exists():
                m = read_image(path, detect_scale_bar=False)
                image, ps = m.data, m.pixel_size_nm
            elif aset.image_data:
                image, ps = _decode_embedded(aset), None
            else:
                raise NanodefectError(f"the image of this annotation file was not found ({aset.image_path!r})", aset.source)
            if aset.image_shape and tuple(aset.image_shape) != image.shape:
                raise NanodefectError(
                    f"the annotations are for a {aset.image_shape} image but the image is {image.shape}", aset.source)
            out.append(TrainingImage(aset, image, aset.pixel_size_nm or ps))
    if not out:
        raise NanodefectError("no training images given")
    return out


def _decode_embedded(aset: AnnotationSet) -> np.ndarray:
    import io

    from PIL import Image

    from ..micrograph import analysed_plane

    with Image.open(io.BytesIO(aset.image_data)) as im:
        return analysed_plane(np.asarray(im.convert("L") if im.mode == "P" else im), aset.source)[0]


def _class_names(items: Sequence[TrainingImage], classes: Sequence[str] | None) -> list[str]:
    if classes:
        return list(classes)
    names: list[str] = []
    for it in items:
        for o in it.annotations.objects:
            if o.label not in names:
                names.append(o.label)
    if not names:
        raise NanodefectError("the annotations contain no objects (outline some particles inside the crops)")
    return names


def _typical_diameter_px(aset: AnnotationSet) -> float | None:
    """Median object diameter (px); with several classes, the geometric mean of the
    per-class medians. One median over all objects jumps between classes of very
    different size (particles ~20 px, single atoms ~3 px) with whichever is more
    numerous in the crops, and then puts the other class far outside the network's range."""
    by_class: dict[str, list[float]] = {}
    for o in aset.objects:
        area = o.area
        if area > 0:
            by_class.setdefault(o.label, []).append(2 * math.sqrt(area / math.pi))
    if not by_class:
        return None
    return float(np.exp(np.mean([np.log(np.median(v)) for v in by_class.values()])))


def _scales(items: Sequence[TrainingImage], d0: float) -> tuple[list[float], float | None]:
    """Per-image rescale factors so that the typical object (:func:`_typical_diameter_px`)
    is ``d0`` px; training nm/px."""
    diam = [_typical_diameter_px(it.annotations) for it in items]
    known = [d for d in diam if d]
    if not known:
        raise NanodefectError("no object with a positive area in the annotations")
    fallback = float(np.median(known))
    if all(it.pixel_size_nm for it in items):
        d_nm = float(np.median([d * it.pixel_size_nm for d, it in zip(diam, items) if d]))
        train_ps = d_nm / d0
        return [it.pixel_size_nm / train_ps for it in items], train_ps
    return [d0 / (d or fallback) for d in diam], None


# ----------------------------------------------------------------------------- loss

def loss_terms(out: torch.Tensor, batch: dict[str, torch.Tensor], n_cls: int) -> dict[str, torch.Tensor]:
    """Masked losses: foreground BCE + soft Dice, distance BCE, class cross-entropy.

    With two or more classes, the classes are balanced by their pixel counts in the batch:
    the class cross-entropy weighs each present class the same, and in the foreground BCE
    the object pixels of a class count ``(pixels of the largest class) / (its pixels)``
    times. A 20-px particle has ~50x the pixels of a single atom; unbalanced, the small
    class is neither segmented reliably nor ever predicted as its class.
    """
    v = batch["valid"][:, 0]
    fg = batch["fg"][:, 0]
    dist = batch["dist"][:, 0]
    fg_logit, dist_logit = out[:, 0], out[:, 1]
    pw = v  # per-pixel weight of the foreground BCE
    ce = None
    if n_cls > 1:
        cls = batch["cls"][:, 0]
        sel = (cls >= 0) & (v > 0)
        ce = out.sum() * 0
        if sel.any():
            tgt = cls[sel]
            cnt = torch.bincount(tgt, minlength=n_cls).float()
            present = cnt > 0
            ce = F.cross_entropy(out[:, 2:].permute(0, 2, 3, 1)[sel], tgt,
                                 weight=torch.where(present, 1.0 / cnt.clamp_min(1.0), torch.zeros_like(cnt)))
            boost = torch.where(present, cnt.max() / cnt.clamp_min(1.0), torch.ones_like(cnt))
            pw = v * torch.where(cls >= 0, boost[cls.clamp_min(0)], torch.ones_like(v))
    bce = (F.binary_cross_entropy_with_logits(fg_logit, fg, reduction="none") * pw).sum() / pw.sum().clamp_min(1.0)
    p = torch.sigmoid(fg_logit) * v
    dice = 1 - (2 * (p * fg).sum() + 1) / (p.sum() + (fg * v).sum() + 1)
    wd = v * (1.0 + fg)  # the distance map matters most inside objects
    dl = (F.binary_cross_entropy_with_logits(dist_logit, dist, reduction="none") * wd).sum() / wd.sum().clamp_min(1.0)
    terms = {"fg_bce": bce, "fg_dice": dice, "dist": dl}
    if ce is not None:
        terms["class"] = ce
    return terms


# ----------------------------------------------------------------------------- validation

@torch.inference_mode()
def _validate(module: torch.nn.Module, regions: list[Region], n_cls: int, dev: torch.device, cfg: ModelConfig) -> tuple[float, float | None]:
    from ..evaluate import detection_scores, evaluate_labels

    module.eval()
    losses, tp, fp, fn = [], 0, 0, 0
    any_val = False
    for r in regions:
        if not r.val.any():
            continue
        any_val = True
        H, W = r.image.shape
        ph, pw = (-H) % 32, (-W) % 32
        x = torch.from_numpy(np.pad(r.image, ((0, ph), (0, pw)), mode="reflect"))[None, None].to(dev)
        out = module(x.contiguous(memory_format=torch.channels_last)).float()[..., :H, :W]
        batch = {k: torch.from_numpy(np.ascontiguousarray(a))[None, None].to(dev) for k, a in
                 (("fg", r.fg), ("dist", r.dist), ("valid", r.val.astype(np.float32)))}
        batch["cls"] = torch.from_numpy(r.cls)[None, None].to(dev)
        losses.append(float(sum(loss_terms(out, batch, n_cls).values())))
        fgp = torch.sigmoid(out[0, 0]).cpu().numpy()
        dp = torch.sigmoid(out[0, 1]).cpu().numpy()
        pred, _ = extract_instances(fgp, dp, cfg.fg_threshold, cfg.seed_threshold, cfg.min_area_px)
        # the same rule as `nanodefect evaluate` with crops: match on the whole region, count
        # the objects whose centroid lies in the validation area
        m = evaluate_labels(r.labels, pred, 0.5, region_mask=r.val)["at_iou"]
        tp, fp, fn = tp + m["tp"], fp + m["fp"], fn + m["fn"]
    module.train()
    if not any_val:
        return float("nan"), None
    return float(np.mean(losses)), float(detection_scores(tp, tp + fn, tp + fp)["f1"])


# ----------------------------------------------------------------------------- main loop

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(
    sources: Iterable[Any],
    out: str | os.PathLike | None = None,
    *,
    base: str | os.PathLike | None = "starter",
    images: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
    time_budget_s: float | None = None,
    epochs: int | None = None,
    device: str = "auto",
    seed: int = 0,
    batch_size: int = 8,
    patch: int = 128,
    lr: float | None = None,
    patience: int = 8,
    min_train_s: float = 90.0,
    validate_every_s: float = 4.0,
    val_fraction: float = 0.2,
    invert_p: float = 0.5,
    scale_jitter: float = 0.25,
    config: ModelConfig | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    background_size: float | None = None,
    keep: str = "auto",
    rehearsal: int | str = "auto",
    paste: float = 0.0,
) -> TrainResult:
    """Train a particle model on annotated crops; see the module docstring.

    ``base``: ``"starter"`` (the shipped model; fine-tuning starts warm), a model folder,
    or None (a new model from ``config``, ImageNet encoder weights when cached).
    ``time_budget_s`` / ``epochs``: when to stop (default: 60 s). The time budget counts
    from the call: the loop gets what is left after loading and preparing the data, less
    :data:`FINISH_RESERVE_S` for the last validation and saving (but at least half the
    budget, however slow the set-up). An *epoch* is as many
    iterations as it takes to draw the annotated training area ~4 times in patches.
    Early stopping (``patience`` validations without improvement) is not considered in
    the first ``min_train_s`` seconds (:func:`fit`), so the default one-minute fine-tune
    always runs its budget.
    ``progress`` is called after each validation; ``should_stop()`` returning True
    cancels: the best checkpoint so far is kept and saved. ``keep``: which weights are
    saved (:func:`fit`; ``"auto"``: the final ones, or the best validated ones when the run is
    cancelled).
    ``background_size``: subtract the support before normalising (a median filter this
    many particle diameters wide; core.segment.background); None keeps the base model's
    setting (the starter's), 0 turns it off.
    ``rehearsal``: the number of synthetic micrographs (:mod:`.rehearsal`) mixed into the
    training patches, so a short fine-tune does not forget what the starter knew about
    other kinds of images; ``"auto"``: :data:`~.rehearsal.DEFAULT_REHEARSAL` when
    fine-tuning the shipped starter on a single class (a particle model), else 0. They
    centre :data:`~.rehearsal.REHEARSAL_SHARE` of the training patches, however large the
    crops, and are left out of the validation; an epoch grows so that it still draws the
    crops ~4 times.
    ``paste``: the probability that a training patch gets 1–4 labelled particles pasted
    in (copy-paste augmentation, :func:`~.data.paste_objects`: onto free training pixels
    whose support level matches the particle's own); 0 (the default) = off.
    """
    if not (rehearsal == "auto" or (isinstance(rehearsal, (int, np.integer)) and not isinstance(rehearsal, bool) and rehearsal >= 0)):
        raise ValueError(f"rehearsal must be 'auto' or a number of images >= 0, got {rehearsal!r}")
    t_start = time.perf_counter()
    seed_everything(seed)
    dev = resolve_device(device)
    items = load_training_images(sources, images)
    names = _class_names(items, classes)
    base_model = None
    if base == "starter":
        try:
            base_model = load_model(default_model_dir(), device="cpu")
        except NanodefectError:
            base_model = None  # no starter shipped (yet): train from scratch
    elif base is not None:
        base_model = load_model(base, device="cpu")
    if base_model is not None:
        cfg = copy.deepcopy(base_model.config)
        cfg.classes = names
    else:
        cfg = copy.deepcopy(config) if config is not None else ModelConfig()
        cfg.classes = names
    scales, train_ps = _scales(items, cfg.object_diameter_px)
    cfg.pixel_size_nm = train_ps
    cfg.train_scale = float(np.median(scales))
    class_ids = {n: i for i, n in enumerate(names)}
    if background_size is not None:
        cfg.background_size = max(float(background_size), 0.0)
    regions: list[Region] = []
    for i, (it, s) in enumerate(zip(items, scales)):
        bg = support_background(cfg, it.image, s)
        regions += build_regions(it.annotations, it.image, class_ids, s, margin_px=patch // 4,
                                 val_fraction=val_fraction, seed=seed + i, background=bg)
    n_rehearsal = int(rehearsal) if rehearsal != "auto" else (
        DEFAULT_REHEARSAL if base == "starter" and base_model is not None and len(names) == 1 else 0)
    synthetic = synthetic_regions(n_rehearsal, seed + 1000, cfg.object_diameter_px,
                                  background_size=cfg.background_size or 0.0) if n_rehearsal else []
    weights = None
    epoch_area = sum(float(r.train.sum()) for r in regions)
    if synthetic:
        # the synthetic images centre a fixed share of the patches, whatever the crops' area
        a_syn = sum(float(r.train.sum()) for r in synthetic)
        f = REHEARSAL_SHARE / (1 - REHEARSAL_SHARE) * epoch_area / max(a_syn, 1.0)
        weights = [1.0] * len(regions) + [f] * len(synthetic)
    sampler = PatchSampler(regions + synthetic, patch=patch, seed=seed, scale_jitter=scale_jitter, invert_p=invert_p,
                           weights=weights, paste=paste)

    module = build_model(cfg, encoder_weights=None if base_model is not None else "auto")
    if base_model is not None:
        state, _ = adapt_state(base_model.module.state_dict(), module)
        module.load_state_dict(state)
    lr = lr or (5e-4 if base_model is not None else 2e-3)
    loop_budget = None
    if time_budget_s is None and epochs is None:
        time_budget_s = 60.0
    if time_budget_s is not None:
        # the budget is the whole call's: set-up so far, the loop, the last check and saving
        loop_budget = max(float(time_budget_s) - (time.perf_counter() - t_start) - FINISH_RESERVE_S,
                          0.5 * float(time_budget_s))
    fitted = fit(module, cfg, regions, sampler, dev, lr=lr, batch_size=batch_size, patch=patch,
                 time_budget_s=loop_budget, epochs=epochs, patience=patience,
                 min_train_s=min_train_s, validate_every_s=validate_every_s, progress=progress, should_stop=should_stop, keep=keep,
                 epoch_area=epoch_area, epoch_share=1 - REHEARSAL_SHARE if synthetic else 1.0)
    module, history, it, best_it, best_loss, best_f1, cancelled, its_per_epoch, t_loop, kept = fitted
    seconds = time.perf_counter() - t_start
    cfg.training = {
        "iterations": it,
        "best_iteration": best_it,
        "epochs": round(it / its_per_epoch, 2),
        "iterations_per_epoch": its_per_epoch,
        "best_val_loss": best_loss if np.isfinite(best_loss) else None,
        "best_val_f1": best_f1,
        "kept": kept,
        "final_val_loss": history[-1].val_loss if history else None,
        "final_val_f1": history[-1].val_f1 if history else None,
        "seconds": round(seconds, 2),
        "loop_seconds": round(time.perf_counter() - t_loop, 2),
        "time_budget_s": time_budget_s,
        "loop_budget_s": round(loop_budget, 2) if loop_budget is not None else None,
        "device": str(dev),
        "seed": seed,
        "batch_size": batch_size,
        "patch": patch,
        "learning_rate": lr,
        "base": "starter" if base == "starter" and base_model is not None else (str(base) if base_model is not None else None),
        "n_images": len(items),
        "n_objects": int(sum(len(it_.annotations.objects) for it_ in items)),
        "n_crops": int(sum(len(it_.annotations.crops) for it_ in items)),
        "scales": [round(s, 4) for s in scales],
        "rehearsal_images": len(synthetic),
        "paste": paste,
        "cancelled": cancelled,
        "package_version": __version__,
    }
    loaded = LoadedModel(module=module, config=cfg, path=None, device=dev)
    path = None
    if out is not None:
        path = save_model(out, module, cfg)
        loaded.path = path
    return TrainResult(model=loaded, path=path, history=history, summary=cfg.training, cancelled=cancelled)


def fit(
    module: torch.nn.Module,
    cfg: ModelConfig,
    regions: list[Region],
    sampler: PatchSampler,
    dev: torch.device,
    *,
    lr: float,
    batch_size: int = 8,
    patch: int = 128,
    time_budget_s: float | None = None,
    epochs: int | None = None,
    patience: int = 8,
    min_train_s: float = 90.0,
    validate_every_s: float = 4.0,
    progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    keep: str = "auto",
    epoch_area: float | None = None,
    epoch_share: float = 1.0,
):
    """The optimisation loop shared by :func:`train` and the starter-model script.

    AdamW with a 10-iteration warm-up and cosine decay over the budget; validation every
    ``validate_every_s`` seconds on the held-out cells; early stopping after ``patience``
    validations without improvement, but never in the first ``min_train_s`` seconds of the
    loop: a one-minute fine-tune always runs its course. Its learning rate decays over the
    budget, so a run stopped at 40 of 60 s keeps weights from a high learning rate, and
    its validation split is too small to call the plateau: one benchmark seed that
    early-stopped at 40 s scored F1 0.745, the same seed run to the end 0.782; over six
    seeds the change is neutral (0.810 -> 0.807 mean; benchmarks/RESULTS.md).

    ``keep``: the weights returned. ``"best"``: the state with the lowest validation loss.
    ``"last"``: the final state. ``"auto"`` (default): the final state when the run ends by
    itself (budget used up, or ``patience`` checks without improvement), the best one when
    it is cancelled (a cancelled run stops mid-schedule, at a high learning rate).
    A few-shot validation split is a handful of crop cells: its loss jumps by 20-40 %
    between checks (0.49 -> 0.70 -> 0.52 in one 60 s run) while the weights keep
    improving on unseen images, so "best" picked a near-random, early iteration (86 or 97
    of ~250 in two runs): on the STEM benchmark one such model scored F1 0.31 and another
    0.725, where the final weights of three seeds scored 0.761-0.783 (benchmarks/RESULTS.md).
    Early stopping therefore only saves time; ``keep="best"`` restores the old behaviour.
    Returns ``(module, history, iterations, best_iteration, best_loss, best_f1,
    cancelled, iterations_per_epoch, t_loop, kept)``, ``kept`` being "best" or "last".
    ``epoch_area``, ``epoch_share``: an epoch draws ``epoch_area`` (default: the sampler's
    whole training area) ~4 times (at least 10 batches) in the ``epoch_share`` of the
    patches that fall there; :func:`train` passes its user's crops and the share of the
    patches they get next to synthetic rehearsal images.
    """
    if keep not in ("auto", "best", "last"):
        raise ValueError(f"keep must be 'auto', 'best' or 'last', got {keep!r}")
    module.to(dev).train()
    module = module.to(memory_format=torch.channels_last)
    n_cls = len(cfg.classes) if len(cfg.classes) > 1 else 0
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda")
    train_area = float(sum(r.train.sum() for r in sampler.regions)) if epoch_area is None else float(epoch_area)
    its_per_epoch = math.ceil(max(10, math.ceil(4 * train_area / (batch_size * patch * patch))) / epoch_share)
    if time_budget_s is None and epochs is None:
        time_budget_s = 60.0
    max_its = epochs * its_per_epoch if epochs else None

    history: list[TrainProgress] = []
    best_state = copy.deepcopy(module.state_dict())
    best_loss, best_f1, best_it = float("inf"), None, 0
    bad = 0
    it = 0
    run_loss = []
    cancelled = False
    last_val = time.perf_counter()
    t_loop = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - t_loop
        if max_its is not None and it >= max_its:
            break
        if time_budget_s is not None and elapsed >= time_budget_s:
            break
        if should_stop is not None and should_stop():
            cancelled = True
            break
        frac = (it / max_its) if max_its else (elapsed / time_budget_s)
        warm = min(1.0, (it + 1) / 10)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0) * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        b = {k: v.to(dev, non_blocking=True) for k, v in sampler.batch(batch_size).items()}
        x = b["image"].contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=dev.type == "cuda"):
            outp = module(x)
        terms = loss_terms(outp.float(), b, n_cls)
        loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        run_loss.append(loss.item())
        it += 1
        now = time.perf_counter()
        end_soon = (max_its is not None and it >= max_its) or (time_budget_s is not None and now - t_loop >= time_budget_s)
        if now - last_val >= validate_every_s or end_soon:
            vloss, vf1 = _validate(module, regions, n_cls, dev, cfg)
            last_val = time.perf_counter()
            tl = float(np.mean(run_loss)) if run_loss else float("nan")
            run_loss = []
            score = vloss if np.isfinite(vloss) else tl  # no validation cells: use the training loss
            improved = score < best_loss - 1e-4
            if improved:
                best_loss, best_f1, best_it = score, vf1, it
                best_state = copy.deepcopy(module.state_dict())
                bad = 0
            else:
                bad += 1
            el = time.perf_counter() - t_loop
            eta = (time_budget_s - el) if time_budget_s else ((max_its - it) * el / it if max_its else None)
            rep = TrainProgress(epoch=it / its_per_epoch, iteration=it, train_loss=tl,
                                val_loss=vloss if np.isfinite(vloss) else None, val_f1=vf1,
                                best_val_loss=best_loss, elapsed_s=el, eta_s=max(eta, 0) if eta is not None else None,
                                improved=improved)
            history.append(rep)
            if progress:
                progress(rep)
            if bad >= patience and el >= min_train_s:
                break
    kept = "best" if keep == "best" or (keep == "auto" and cancelled) else "last"
    if kept == "best":
        module.load_state_dict(best_state)
    module.eval()
    return module, history, it, best_it, best_loss, best_f1, cancelled, its_per_epoch, t_loop, kept
