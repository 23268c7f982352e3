"""Batch engine (DuckDB): offline event log, point-in-time training sets, backfill.

Renders the definitions of ``parity.registry``; never imports ``parity.streaming`` or
``parity.serving``.
"""
