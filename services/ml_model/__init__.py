"""The ML model service: features, walk-forward training, a model registry and ensemble predictions."""
