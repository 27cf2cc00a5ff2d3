"""Users: the event contract, recording events into user features in one transaction,
profile math, co-visits, the state a search or a replay reads, and impressions.

May import engine.core, engine.store, engine.catalog, engine.encoder and engine.index.
"""
