"""tlpipe: transfer learning as a production pipeline (KFP v2 components, MLflow registry)."""

__version__ = "0.1.0"
