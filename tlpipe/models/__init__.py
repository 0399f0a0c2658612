"""Backbones, the classifier, and model artifacts."""

from tlpipe.models.classifier import Classifier, ModelSpec, predict, probabilities
from tlpipe.models.io import load_model, read_weights, save_model

__all__ = ["Classifier", "ModelSpec", "load_model", "predict", "probabilities", "read_weights", "save_model"]
