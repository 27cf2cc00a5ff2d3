"""Core: settings, errors, the clock, the validation primitives of the contract, file-system
chores (private folders, atomic writes, locks), background pollers and the API key.

Imports nothing else of the engine.
"""
