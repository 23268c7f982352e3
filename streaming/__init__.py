"""Streaming engines: the embedded Kafka -> Redis engine and the Flink compiler.

Executes the definitions of ``parity.registry``; never imports ``parity.batch`` or
``parity.serving``.
"""
