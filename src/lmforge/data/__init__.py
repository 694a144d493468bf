"""Data sources, the shared datamodule base, batching and data checks.

A task family's own datamodule lives in its folder (`lmforge.tasks.<family>.data`).
"""
