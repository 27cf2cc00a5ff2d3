"""Store: SQL engines and sessions, the tables, migrations, bulk statements, commit-time
notifications and the election of one process among many.

May import engine.core.
"""
