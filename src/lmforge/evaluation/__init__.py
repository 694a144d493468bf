"""Evaluation around training: baselines, the before/after comparison, shared forward passes."""
