"""Evaluation: pure metric functions, batched generation for scoring, and the eval runner."""
