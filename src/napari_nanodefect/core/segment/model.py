"""Building, saving and loading models: safetensors weights + config.json, never pickle."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
import copy
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from ... import __version__
from ..errors import NanodefectError
from .config import ModelConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


@dataclass
class LoadedModel:
    """A ready-to-run model: the torch module (eval mode), its config and its folder.

    ``module`` keeps its BatchNorm layers (fine-tuning starts from it); prediction runs
    :meth:`inference_module`, a copy with every BatchNorm folded into the convolution
    before it (the same function, ~1.4x faster on CPU), made once and cached. Change
    ``module``'s weights in place and the cache is stale: build a new ``LoadedModel``.
    """

    module: torch.nn.Module
    config: ModelConfig
    path: Path | None = None
    device: torch.device = torch.device("cpu")
    #: prediction arithmetic: "auto" (float16 autocast on CUDA, bfloat16 on CPUs with native
    #: bf16 instructions, float32 elsewhere) or "fp32" (always float32); see :func:`autocast_dtype`
    precision: str = "auto"
    _inference: torch.nn.Module | None = field(default=None, init=False, repr=False, compare=False)

    def inference_module(self) -> torch.nn.Module:
        """``module`` with Conv2d+BatchNorm2d pairs fused (eval mode, channels_last), cached;
        ``module`` itself while it is in training mode."""
        if self.module.training:
            return self.module
        if self._inference is None:
            fused = copy.deepcopy(self.module)
            fuse_conv_bn(fused)
            self._inference = fused.to(memory_format=torch.channels_last).eval()
        return self._inference

    def autocast_dtype(self) -> torch.dtype | None:
        """The reduced precision prediction runs in (None: float32); see :func:`autocast_dtype`."""
        return autocast_dtype(self.device, self.precision)


#: values of ``precision`` (:func:`load_model`, ``nanodefect predict --precision``)
PRECISIONS = ("auto", "fp32")
#: environment variable that sets the default ``precision`` of :func:`load_model`
PRECISION_ENV = "NANODEFECT_PRECISION"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (x86 ``avx512_bf16`` or ``amx_bf16``
    flags on Linux, and PyTorch's oneDNN can use them). Elsewhere bf16 convolutions are
    emulated and no faster than float32, so prediction stays in float32."""
    global _NATIVE_BF16
    if _NATIVE_BF16 is None:
        flags: set[str] = set()
        try:
            with open("/proc/cpuinfo") as fh:
                for line in fh:
                    if line.startswith("flags"):
                        flags = set(line.split(":", 1)[1].split())
                        break
        except OSError:
            pass
        try:
            mkldnn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            mkldnn = False
        _NATIVE_BF16 = mkldnn and bool(flags & {"avx512_bf16", "amx_bf16"})
    return _NATIVE_BF16


_NATIVE_BF16: bool | None = None


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """Autocast dtype for prediction on ``device``: float16 on CUDA, bfloat16 on a CPU with
    native bf16 (:func:`cpu_has_native_bf16`; ~1.6x faster network passes on such a CPU,
    probabilities within ~0.04 of float32's), None (float32) otherwise or with
    ``precision="fp32"``. Training is unaffected (float32 on CPU, float16 AMP on CUDA)."""
    if precision not in PRECISIONS:
        raise NanodefectError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def fuse_conv_bn(module: torch.nn.Module) -> int:
    """Fold every BatchNorm2d (eval statistics) into the Conv2d that precedes it in the
    same ``nn.Sequential``, in place; the BatchNorm becomes ``nn.Identity``. Returns the
    number of pairs fused. Only for inference: the running statistics are baked in."""
    n = 0
    for seq in module.modules():
        if not isinstance(seq, torch.nn.Sequential):
            continue
        items = list(seq._modules.items())
        for (_, conv), (name, bn) in zip(items, items[1:]):
            if not (isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d)):
                continue
            if bn.running_mean is None or bn.running_var is None:
                continue
            with torch.no_grad():
                gamma = bn.weight if bn.affine else torch.ones_like(bn.running_mean)
                beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
                f = gamma / torch.sqrt(bn.running_var + bn.eps)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                new_bias = (bias - bn.running_mean) * f + beta
                conv.weight.mul_(f.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
                conv.bias = torch.nn.Parameter(new_bias.to(conv.weight.dtype), requires_grad=False)
            seq._modules[name] = torch.nn.Identity()
            n += 1
    return n


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU. Asking for CUDA without one is an error."""
    if isinstance(device, torch.device):
        return device
    device = (device or "auto").lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NanodefectError("--device cuda was asked for but no CUDA GPU is available (use auto or cpu)")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise NanodefectError(f"unknown device {device!r}: use auto, cpu or cuda")
    return torch.device(device)


def imagenet_weights_cached(encoder: str) -> bool:
    """True when smp's ImageNet weights for ``encoder`` are already on this machine."""
    try:
        import segmentation_models_pytorch as smp
        from huggingface_hub import try_to_load_from_cache

        settings = smp.encoders.encoders[encoder]["pretrained_settings"].get("imagenet")
        if not settings:
            return False
        hit = try_to_load_from_cache(settings["repo_id"], "model.safetensors", revision=settings.get("revision"))
        return isinstance(hit, str) and os.path.exists(hit)
    except Exception:
        return False


def build_model(config: ModelConfig, encoder_weights: str | None = "auto") -> torch.nn.Module:
    """A fresh smp model for ``config``.

    ``encoder_weights="auto"`` uses ImageNet weights when they are cached on this machine
    (nothing is downloaded), else random initialisation; ``None`` always random.
    """
    import segmentation_models_pytorch as smp

    try:
        cls = getattr(smp, config.arch)
    except AttributeError as exc:
        raise NanodefectError(f"unknown architecture {config.arch!r} (segmentation-models-pytorch has no such model)") from exc
    weights = None
    if encoder_weights == "auto":
        weights = "imagenet" if imagenet_weights_cached(config.encoder) else None
    elif encoder_weights:
        weights = encoder_weights
    kwargs = dict(encoder_name=config.encoder, encoder_weights=weights, in_channels=config.in_channels,
                  classes=config.n_outputs, encoder_depth=config.encoder_depth)
    if config.arch in ("Unet", "UnetPlusPlus"):
        kwargs["decoder_channels"] = tuple(config.decoder_channels)[: config.encoder_depth]
    env = {"HF_HUB_OFFLINE": "1"} if weights else {}
    with _env(env), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = cls(**kwargs)
        except (KeyError, ValueError) as exc:
            raise NanodefectError(f"cannot build {config.arch} with encoder {config.encoder!r}: {exc}") from exc
    config.encoder_weights = weights
    return model


@contextlib.contextmanager
def _env(values: dict[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def save_model(folder: str | os.PathLike, module: torch.nn.Module, config: ModelConfig, half: bool = False) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``folder`` atomically.

    ``half=True`` stores floating-point weights as float16 (half the file size, used for
    the shipped starter model); loading casts them back into the float32 model. BatchNorm
    running statistics, and any tensor with a value float16 cannot hold (beyond
    +-65504), stay float32: a variance rounded to ``inf`` would silence its channel.

    Both files are written into a temporary sibling folder which then replaces ``folder``,
    so an interrupted save never leaves a half-written model.
    """
    config.package_version = __version__
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    if half:
        state = {k: _half_if_safe(k, v) for k, v in state.items()}
    return write_weights_folder(folder, state, config.dumps(), {"format": "napari-nanodefect-model"})


def _half_if_safe(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as float16 when that loses only precision; float32 for BatchNorm running
    statistics and for tensors whose values overflow float16."""
    if not tensor.is_floating_point() or key.endswith(("running_mean", "running_var")):
        return tensor
    h = tensor.half()
    if bool(torch.isfinite(h).all()) or not bool(torch.isfinite(tensor).all()):
        return h
    return tensor


def write_weights_folder(folder: str | os.PathLike, state: dict, config_text: str, metadata: dict[str, str],
                         kind: str = "model") -> Path:
    """Write ``model.safetensors`` (``state``) + ``config.json`` (``config_text``) into
    ``folder`` atomically: both go into a temporary sibling folder that then replaces
    ``folder``, so an interrupted save never leaves a half-written model. A non-empty
    ``folder`` without ``config.json`` is not a ``kind`` folder and is never replaced."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        save_file(state, str(tmp / WEIGHTS), metadata=metadata)
        (tmp / CONFIG).write_text(config_text + "\n", encoding="utf-8")
        old = None
        if folder.exists():
            if not (folder / CONFIG).exists() and any(folder.iterdir()):
                raise NanodefectError(f"exists and is not a {kind} folder; refusing to overwrite it", folder)
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_config(folder: str | os.PathLike) -> ModelConfig:
    folder = Path(folder)
    if not folder.is_dir():
        raise NanodefectError("model folder not found (expected a folder with config.json and model.safetensors)", folder)
    cfg_path = folder / CONFIG
    if not cfg_path.exists():
        raise NanodefectError(f"not a model folder: {CONFIG} is missing", folder)
    try:
        data = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NanodefectError(f"config.json is not valid JSON ({exc})", cfg_path) from exc
    if isinstance(data, dict) and data.get("task") not in (None, "particles"):
        raise NanodefectError(f"this is a {data.get('task')!r} model, not a particle model "
                              "(defect models load with core.defects.segment.load_defect_model)", cfg_path)
    return ModelConfig.from_json(data, cfg_path)


def resolve_precision(precision: str | None = None) -> str:
    """``precision``, or the environment variable ``NANODEFECT_PRECISION``, else "auto";
    checked against :data:`PRECISIONS`."""
    precision = precision or os.environ.get(PRECISION_ENV) or "auto"
    if precision not in PRECISIONS:
        raise NanodefectError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def load_model(folder: str | os.PathLike | None = None, device: str | torch.device | None = "auto",
               precision: str | None = None) -> LoadedModel:
    """Load a model folder (default: the shipped starter model). Never unpickles.

    ``precision``: "auto" or "fp32" (:func:`autocast_dtype`); default: the environment
    variable ``NANODEFECT_PRECISION``, else "auto"."""
    precision = resolve_precision(precision)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder) if folder is not None else default_model_dir()
    config = read_config(folder)
    wpath = folder / WEIGHTS
    if not wpath.exists():
        raise NanodefectError(f"not a complete model folder: {WEIGHTS} is missing", folder)
    try:
        state = load_file(str(wpath), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise NanodefectError(f"the weights file is corrupt or truncated ({exc})", wpath) from exc
    module = build_model(config, encoder_weights=None)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        msg = str(exc).splitlines()[0]
        raise NanodefectError(f"weights do not match the architecture in config.json ({msg})", wpath) from exc
    dev = resolve_device(device)
    # channels_last is ~1.6x faster for these convolutions on CPU (and fine on GPU)
    module = module.to(dev).to(memory_format=torch.channels_last).eval()
    return LoadedModel(module=module, config=config, path=folder, device=dev, precision=precision)


def default_model_dir() -> Path:
    """Folder of the starter particle model shipped inside the package."""
    path = Path(str(resources.files("napari_nanodefect") / "models" / "starter-particles"))
    if not (path / CONFIG).exists():
        raise NanodefectError("the starter model is missing from this installation (reinstall napari-nanodefect)", path)
    return path


def adapt_state(state: dict[str, torch.Tensor], target: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Copy what fits from ``state`` into ``target``'s shapes (fine-tuning onto new classes).

    Tensors of equal shape are copied; output-head tensors whose leading (channel) size
    differs get their first channels copied and the rest from ``target``'s fresh init.
    Returns the state to load and the names only partly copied.
    """
    new = target.state_dict()
    partial = []
    for name, t in new.items():
        src = state.get(name)
        if src is None:
            partial.append(name)
            continue
        if src.shape == t.shape:
            new[name] = src.clone()
        elif src.ndim == t.ndim and src.shape[1:] == t.shape[1:]:
            n = min(src.shape[0], t.shape[0])
            merged = t.clone()
            merged[:n] = src[:n]
            new[name] = merged
            partial.append(name)
        else:
            partial.append(name)
    return new, partial
