"""Online store (Redis tiles) and the lookup API.

Reads the definitions of ``parity.registry``; never imports ``parity.batch`` or
``parity.streaming``.
"""
