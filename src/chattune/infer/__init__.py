"""Inference: chat with a run dir or a model."""
