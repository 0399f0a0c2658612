"""Backbones, the classifier, and model artifacts."""

from tlpipe.models.classifier import Classifier, ModelSpec
from tlpipe.models.io import load_model, save_model
from tlpipe.models.weights import read_weights

__all__ = ["Classifier", "ModelSpec", "load_model", "read_weights", "save_model"]
