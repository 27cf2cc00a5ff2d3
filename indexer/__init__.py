"""Batch jobs: ingest, events, build, train and evaluate, and the job runner that starts them
from the admin API; plain functions over the engine, called the same way by the CLI (web.cli)."""
