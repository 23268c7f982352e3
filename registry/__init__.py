"""Definitions, expressions, semantics and the registry: the spine every engine renders.

This package imports no engine (no DuckDB connection, Redis, Kafka or Flink).
"""
