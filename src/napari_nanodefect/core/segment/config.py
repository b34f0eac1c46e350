"""Model configuration: everything needed to rebuild, normalise and rescale (config.json)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import NanodefectError

#: output channels before the class channels: foreground logit, normalised-distance logit
HEAD_FIXED = ("foreground", "distance")
FORMAT = "napari-nanodefect-model"
FORMAT_VERSION = 1


@dataclass
class ModelConfig:
    """What a model directory's ``config.json`` holds.

    Output head (``head = "fg+dist"``): channel 0 is the foreground logit (any object),
    channel 1 the logit of the normalised distance to the object's border (1 at the
    object's centre, 0 at its edge: touching particles have separate peaks), and one
    logit per class after that when there are two or more classes.

    Scale: the model sees objects at about ``object_diameter_px`` pixels. Training
    rescales each image by ``object_diameter_px / median labelled diameter``;
    ``pixel_size_nm`` is the physical pixel size the model was trained at (None when the
    training images had no pixel size) and ``train_scale`` the median rescale factor.
    """

    task: str = "particles"
    arch: str = "Unet"
    encoder: str = "mobilenet_v2"
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 8)
    in_channels: int = 1
    classes: list[str] = field(default_factory=lambda: ["particle"])
    head: str = "fg+dist"
    object_diameter_px: float = 20.0
    pixel_size_nm: float | None = None
    train_scale: float = 1.0
    normalisation: dict[str, float] = field(default_factory=lambda: {"low_percentile": 0.5, "high_percentile": 99.5})
    #: support flattening before normalisation (core.segment.background): the width of the
    #: median filter in particle diameters (object_diameter_px / scale image px); 0 = off
    background_size: float = 0.0
    tile_size: int = 512  #: largest tile (network px); tiles are spread evenly over the image
    tile_overlap: int = 64
    fg_threshold: float = 0.5
    seed_threshold: float = 0.5
    min_area_px: float = 20.0  #: network px; an object at the trained size has ~300
    #: > 0: objects are seeded at the distance map's peaks that rise this much (0..1) above
    #: their saddle (core.segment.instances.split_by_peaks) instead of at its regions above
    #: seed_threshold; 0 = the threshold rule
    split_peak_h: float = 0.0
    #: > 0 (below fg_threshold): after the contrast filter, objects of ``fg > faint_threshold``
    #: that touch no object already found and stand out like those objects are added
    #: (faint and small particles the network is unsure of); 0 = off
    faint_threshold: float = 0.0
    #: network px: ring around each object in which its contrast with the surroundings is
    #: measured; objects of the image's minority contrast sign are dropped (0: keep all)
    contrast_ring_px: float = 3.0
    encoder_weights: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    package_version: str = ""

    @property
    def n_outputs(self) -> int:
        return len(HEAD_FIXED) + (len(self.classes) if len(self.classes) > 1 else 0)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["decoder_channels"] = list(self.decoder_channels)
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **d}

    @classmethod
    def from_json(cls, data: Any, path: Path | None = None) -> "ModelConfig":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise NanodefectError(f"not a napari-nanodefect model config (expected \"format\": \"{FORMAT}\")", path)
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise NanodefectError(
                f"model format version {data['format_version']} is newer than this napari-nanodefect understands "
                f"({FORMAT_VERSION}); upgrade the package", path)
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in known}
        if "decoder_channels" in kwargs:
            kwargs["decoder_channels"] = tuple(int(c) for c in kwargs["decoder_channels"])
        try:
            cfg = cls(**kwargs)
        except TypeError as exc:
            raise NanodefectError(f"invalid model config: {exc}", path) from exc
        if not cfg.classes or not all(isinstance(c, str) and c for c in cfg.classes):
            raise NanodefectError("model config has no valid 'classes' list", path)
        return cfg

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, allow_nan=False)
