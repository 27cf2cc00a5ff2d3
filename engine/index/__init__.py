"""Index: versioned artifacts and their publication, the ANN backends (FAISS, Milvus), BM25,
the delta of items written since a build, item vectors and the embedding follower.

May import engine.core, engine.store, engine.catalog.items and engine.encoder.
"""
