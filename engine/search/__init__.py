"""Search: the request and response types and the pipeline, one module per stage
(context, candidates, features, rank, page).

May import every other room; only engine.runtime imports it.
"""
