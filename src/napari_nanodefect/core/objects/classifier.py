"""Per-object (particle) classifiers with two engines, Qt-free.

* ``"rf"`` — a random forest (500 trees, class-balanced weights) on
  :func:`~napari_nanodefect.core.objects.features.patch_features` of each object's crop
  (Groschner et al. 2021: FFT radial profile + real-space intensity; here also the
  object's shape). Trained with scikit-learn; stored as plain arrays (the trees' split
  features, thresholds, children and leaf class fractions) in safetensors and evaluated
  with numpy, so loading a model never unpickles anything.
* ``"cnn"`` — a small timm CNN on the resized crops (Zelenka et al. 2022 used 48 x 48
  crops), trained with class-balanced sampling and rotation/flip/contrast/noise
  augmentation (:mod:`napari_nanodefect.core.defects.classify`), so the minority class is
  seen as often as the others, each time altered.

:func:`cross_validate` gives the stratified k-fold balanced accuracy and confusion matrix
of an engine before the user applies it; :func:`train_object_classifier`,
:func:`save_object_classifier` / :func:`load_object_classifier` and
:meth:`ObjectClassifier.predict_proba` do the rest.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import NanodefectError
from .features import feature_names, patch_features

__all__ = ["Forest", "ObjectClassifier", "crop_features", "train_object_classifier", "cross_validate",
           "save_object_classifier", "load_object_classifier", "balanced_accuracy"]

FORMAT = "napari-nanodefect-object-classifier"
ENGINES = ("rf", "cnn")


# ----------------------------------------------------------------------------- forest as arrays


@dataclass
class Forest:
    """A random forest as flat arrays: node ``n`` of tree ``t`` is row ``offsets[t] + n``;
    ``feature`` -1 marks a leaf; ``value`` holds each node's class fractions."""

    feature: np.ndarray      # int32 (nodes,)
    threshold: np.ndarray    # float64 (nodes,)
    left: np.ndarray         # int32 (nodes,), tree-local
    right: np.ndarray        # int32 (nodes,), tree-local
    value: np.ndarray        # float32 (nodes, classes)
    offsets: np.ndarray      # int64 (trees,)

    @classmethod
    def from_sklearn(cls, rf) -> Forest:
        feats, thrs, lefts, rights, vals, offs = [], [], [], [], [], []
        n = 0
        for est in rf.estimators_:
            t = est.tree_
            offs.append(n)
            feats.append(np.where(t.children_left < 0, -1, t.feature).astype(np.int32))
            thrs.append(t.threshold.astype(np.float64))
            lefts.append(t.children_left.astype(np.int32))
            rights.append(t.children_right.astype(np.int32))
            v = t.value[:, 0, :].astype(np.float64)
            vals.append((v / np.maximum(v.sum(1, keepdims=True), 1e-12)).astype(np.float32))
            n += t.node_count
        return cls(np.concatenate(feats), np.concatenate(thrs), np.concatenate(lefts), np.concatenate(rights),
                   np.concatenate(vals), np.asarray(offs, np.int64))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, np.float64)
        if X.ndim != 2:
            raise ValueError("features must be (objects, features)")
        # sklearn splits on float32 features: compare alike
        X32 = X.astype(np.float32).astype(np.float64)
        out = np.zeros((X.shape[0], self.value.shape[1]), np.float64)
        rows = np.arange(X.shape[0])
        for off in self.offsets:
            node = np.zeros(X.shape[0], np.int64)
            while True:
                f = self.feature[off + node]
                active = f >= 0
                if not active.any():
                    break
                a = np.flatnonzero(active)
                nd = node[a]
                go_left = X32[rows[a], f[a]] <= self.threshold[off + nd]
                node[a] = np.where(go_left, self.left[off + nd], self.right[off + nd])
            out += self.value[off + node]
        return out / len(self.offsets)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"rf.feature": self.feature, "rf.threshold": self.threshold, "rf.left": self.left,
                "rf.right": self.right, "rf.value": self.value, "rf.offsets": self.offsets}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> Forest:
        return cls(*(np.asarray(a[f"rf.{k}"]) for k in ("feature", "threshold", "left", "right", "value", "offsets")))


# ----------------------------------------------------------------------------- classifier


def crop_features(crops: np.ndarray, masks: np.ndarray | None = None, feature_set: str = "extended") -> np.ndarray:
    """:func:`patch_features` of every crop, ``(N, F)``."""
    crops = np.asarray(crops)
    if crops.ndim != 3:
        raise ValueError(f"expected crops (N, H, W), got shape {crops.shape}")
    if masks is not None and len(masks) != len(crops):
        raise ValueError("give one mask per crop")
    rows = [patch_features(c, feature_set, None if masks is None else masks[i]) for i, c in enumerate(crops)]
    return np.asarray(rows, np.float64).reshape(len(crops), -1)


@dataclass
class ObjectClassifier:
    """A trained per-object classifier (either engine); ``config`` rebuilds it."""

    engine: str
    classes: list[str]
    config: dict[str, Any]
    forest: Forest | None = None
    cnn: Any = None  # core.defects.classify.OrderClassifier
    history: dict[str, Any] = field(default_factory=dict)

    def predict_proba(self, crops: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities ``(N, C)`` of crops from :func:`object_crops` (same size)."""
        crops = np.asarray(crops, np.float32)
        if len(crops) == 0:
            return np.zeros((0, len(self.classes)))
        if self.engine == "rf":
            use_shape = bool(self.config.get("with_shape"))
            X = crop_features(crops, masks if use_shape else None, self.config["feature_set"])
            if use_shape and masks is None:
                raise NanodefectError("this classifier uses object shapes: give the masks")
            return self.forest.predict_proba(X)
        return _cnn_proba(self.cnn, crops)

    def predict(self, crops: np.ndarray, masks: np.ndarray | None = None) -> list[str]:
        p = self.predict_proba(crops, masks)
        return [self.classes[i] for i in np.argmax(p, axis=1)]


def _cnn_proba(clf, crops: np.ndarray, batch: int = 128) -> np.ndarray:
    """Softmax of the CNN on each crop (each prepared as the classifier prepares a patch),
    in batches; equal to ``clf.predict_proba(crop)`` per crop when crops are patch-sized."""
    import torch

    from ..defects.classify import _pad_to, _prepare

    p = int(clf.patch)
    x = np.stack([_pad_to(_prepare(c), p)[:p, :p] for c in crops])[:, None].astype(np.float32)
    dev = next(clf.module.parameters()).device
    clf.module.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            t = torch.from_numpy(np.ascontiguousarray(x[i:i + batch])).to(dev)
            out.append(torch.softmax(clf.module(t).float(), dim=1).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def _check(crops, targets, classes):
    crops = np.asarray(crops, np.float32)
    targets = np.asarray(targets, np.int64)
    classes = [str(c) for c in classes]
    if crops.ndim != 3 or len(crops) != len(targets) or len(crops) == 0:
        raise NanodefectError("give one class per crop (and at least one crop)")
    if len(classes) < 2 or targets.min() < 0 or targets.max() >= len(classes):
        raise NanodefectError(f"targets must index at least two classes, got classes {classes}")
    present = np.bincount(targets, minlength=len(classes))
    if (present == 0).any():
        missing = [c for c, n in zip(classes, present) if n == 0]
        raise NanodefectError(f"no training objects of class(es) {missing}")
    return crops, targets, classes


def train_object_classifier(
    crops: np.ndarray,
    targets: Sequence[int],
    classes: Sequence[str],
    *,
    engine: str = "rf",
    masks: np.ndarray | None = None,
    feature_set: str = "extended",
    n_trees: int = 500,
    seed: int = 0,
    epochs: int = 40,
    cnn_encoder: str = "resnet10t",
) -> ObjectClassifier:
    """Train an engine on labelled crops (``targets`` index ``classes``).

    ``"rf"``: class-balanced random forest of ``n_trees`` trees on the crop features (with
    the shape of ``masks`` when given). ``"cnn"``: ``epochs`` of class-balanced,
    augmented training of a timm ``cnn_encoder`` on the whole crops.
    """
    crops, targets, classes = _check(crops, targets, classes)
    if engine not in ENGINES:
        raise NanodefectError(f"unknown engine {engine!r}: use one of {ENGINES}")
    size = int(crops.shape[1])
    cfg: dict[str, Any] = {"format": FORMAT, "engine": engine, "classes": classes, "crop_size": size,
                           "n_per_class": {c: int((targets == i).sum()) for i, c in enumerate(classes)}, "seed": seed}
    if engine == "rf":
        from sklearn.ensemble import RandomForestClassifier

        X = crop_features(crops, masks, feature_set)
        rf = RandomForestClassifier(n_estimators=int(n_trees), class_weight="balanced", random_state=seed, n_jobs=1)
        rf.fit(X, targets)
        cfg.update(feature_set=feature_set, with_shape=masks is not None, n_trees=int(n_trees),
                   features=feature_names(feature_set, masks is not None))
        return ObjectClassifier("rf", classes, cfg, forest=Forest.from_sklearn(rf))
    from ..defects.classify import train_classifier

    n = len(crops)
    clf, hist = train_classifier(list(crops), list(targets), classes, epochs=epochs, time_budget_s=None,
                                 patch=size, seed=seed, encoder=cnn_encoder, batch_size=min(32, max(8, n)),
                                 patches_per_image=1)
    cfg.update(encoder=cnn_encoder, epochs=epochs, cnn=clf.config)
    return ObjectClassifier("cnn", classes, cfg, cnn=clf, history=hist)


def balanced_accuracy(truth: Sequence[int], pred: Sequence[int], n_classes: int) -> float:
    """Mean per-class recall over the classes present in ``truth``."""
    t, p = np.asarray(truth), np.asarray(pred)
    rec = [float(np.mean(p[t == k] == k)) for k in range(n_classes) if np.any(t == k)]
    return float(np.mean(rec)) if rec else float("nan")


def cross_validate(
    crops: np.ndarray,
    targets: Sequence[int],
    classes: Sequence[str],
    *,
    k: int = 5,
    seed: int = 0,
    groups: Sequence[Any] | None = None,
    **train_kwargs,
) -> dict[str, Any]:
    """Stratified ``k``-fold cross-validation (folds capped by the smallest class; with
    ``groups``, objects of one group stay in one fold). Returns the balanced accuracy
    per fold, its mean and std, the pooled balanced accuracy, the confusion matrix
    (rows truth, columns prediction) and the out-of-fold predictions."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    crops, targets, classes = _check(crops, targets, classes)
    masks = train_kwargs.pop("masks", None)
    k = int(min(k, np.bincount(targets).min()))
    if k < 2:
        raise NanodefectError("cross-validation needs at least two objects of every class")
    if groups is not None:
        k = min(k, len(set(map(str, groups))))
        if k < 2:
            raise NanodefectError("grouped cross-validation needs objects from at least two images")
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(crops, targets, groups)
    else:
        splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(crops, targets)
    oof = np.full(len(crops), -1, np.int64)
    folds = []
    for tr, te in splits:
        if len(np.unique(targets[tr])) < len(classes):
            # a class absent from this training fold: train on those present, map back
            present = np.unique(targets[tr])
            sub = {int(c): i for i, c in enumerate(present)}
            model = train_object_classifier(crops[tr], [sub[int(t)] for t in targets[tr]],
                                            [classes[int(c)] for c in present],
                                            masks=None if masks is None else masks[tr], seed=seed, **train_kwargs)
            p = model.predict_proba(crops[te], None if masks is None else masks[te])
            pred = present[np.argmax(p, 1)]
        else:
            model = train_object_classifier(crops[tr], targets[tr], classes,
                                            masks=None if masks is None else masks[tr], seed=seed, **train_kwargs)
            pred = np.argmax(model.predict_proba(crops[te], None if masks is None else masks[te]), 1)
        oof[te] = pred
        folds.append(balanced_accuracy(targets[te], pred, len(classes)))
    conf = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(conf, (targets, oof), 1)
    return {"folds": folds, "balanced_accuracy": float(np.mean(folds)), "std": float(np.std(folds)),
            "pooled_balanced_accuracy": balanced_accuracy(targets, oof, len(classes)), "confusion": conf,
            "predictions": oof, "k": k, "classes": classes}


# ----------------------------------------------------------------------------- files


def save_object_classifier(model: ObjectClassifier, folder: str | os.PathLike) -> Path:
    """``model.safetensors`` + ``config.json``, written atomically (no pickle)."""
    import torch

    from ... import __version__
    from ..segment.model import write_weights_folder

    cfg = dict(model.config)
    cfg.update(format=FORMAT, engine=model.engine, classes=list(model.classes), package_version=__version__)
    if model.engine == "rf":
        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model.forest.arrays().items()}
    else:
        state = {f"cnn.{k}": v.detach().cpu().contiguous() for k, v in model.cnn.module.state_dict().items()}
    return write_weights_folder(Path(folder), state, json.dumps(cfg, indent=2), {"format": FORMAT},
                                kind="object classifier")


def load_object_classifier(folder: str | os.PathLike) -> ObjectClassifier:
    """Load a folder written by :func:`save_object_classifier`; clear errors otherwise."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    folder = Path(folder)
    cpath = folder / "config.json"
    if not folder.is_dir() or not cpath.is_file():
        raise NanodefectError("not an object-classifier folder (expected config.json and model.safetensors)", folder)
    try:
        cfg = json.loads(cpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NanodefectError(f"config.json is not valid JSON ({exc})", cpath) from exc
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise NanodefectError(f"config.json is not a {FORMAT} config", cpath)
    engine, classes = cfg.get("engine"), cfg.get("classes")
    if engine not in ENGINES or not isinstance(classes, list) or len(classes) < 2:
        raise NanodefectError("config.json lacks a valid engine or class list", cpath)
    wpath = folder / "model.safetensors"
    if not wpath.is_file():
        raise NanodefectError("weights file model.safetensors is missing", folder)
    try:
        arrays = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as exc:
        raise NanodefectError(f"cannot read weights ({exc})", wpath) from exc
    if engine == "rf":
        try:
            forest = Forest.from_arrays(arrays)
        except KeyError as exc:
            raise NanodefectError(f"the weights lack {exc}", wpath) from exc
        if forest.value.shape[1] != len(classes):
            raise NanodefectError("the forest's classes do not match config.json", wpath)
        return ObjectClassifier("rf", list(classes), cfg, forest=forest)
    import torch

    from ..defects.classify import build_classifier

    clf = build_classifier(classes, encoder=cfg.get("encoder", "resnet10t"), patch=int(cfg["crop_size"]))
    state = {k[4:]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("cnn.")}
    try:
        clf.module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise NanodefectError(f"weights do not match the architecture in config.json ({exc})", wpath) from exc
    clf.module.eval()
    return ObjectClassifier("cnn", list(classes), cfg, cnn=clf)
