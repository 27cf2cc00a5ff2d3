"""Encoder: text to unit vectors with the configured sentence-transformers model, through
ONNX Runtime (exported once, checked against torch) or torch.

May import engine.core, engine.store and engine.catalog.items.
"""
