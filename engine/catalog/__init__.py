"""Catalog: items (validate, upsert, delete), the fields a search returns and ranks on, the
filter language, and each process's watch of popularity and deletions.

May import engine.core and engine.store.
"""
