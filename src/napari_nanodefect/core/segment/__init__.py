"""Few-shot particle segmentation: model files, training, tiled inference, instances.

Pure Python + torch + segmentation-models-pytorch; no Qt. The typical script::

    from napari_nanodefect.core.segment import train, predict_image, load_model
    result = train(["crops.json"], out="my_model", time_budget_s=60)
    pred = predict_image(load_model("my_model"), "other_image.tif")
    pred.labels, pred.classes
"""

from .config import ModelConfig
from .model import build_model, default_model_dir, load_model, save_model, LoadedModel
from .instances import extract_instances
from .predict import Prediction, predict_array, predict_image
from .train import TrainProgress, TrainResult, train

__all__ = [
    "ModelConfig",
    "LoadedModel",
    "build_model",
    "load_model",
    "save_model",
    "default_model_dir",
    "extract_instances",
    "predict_array",
    "predict_image",
    "Prediction",
    "train",
    "TrainProgress",
    "TrainResult",
]
