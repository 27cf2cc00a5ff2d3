"""Ranking: the sigmoid model and its feature names, model versions, merchandising rules,
online experiments (interleaving) and offline metrics.

May import every room below engine.search.pipeline.
"""
