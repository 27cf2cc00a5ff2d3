"""Batch jobs (ingest, build) and the `recsearch` command line; plain functions over the engine."""
