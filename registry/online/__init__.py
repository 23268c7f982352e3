"""The online store's shared half: key layout, tile encoding, and the one write path.

Serving reads what these modules define; bootstrap, the stream engines and the Flink sink
write through :class:`~parity.registry.online.writer.OnlineWriter`. Importing this package
imports no Redis client (the writer is handed one).
"""
