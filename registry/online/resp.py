"""Bulk command exchange with Redis, without a client object per command.

A stream batch reads and writes tens of thousands of small commands (``HMGET``, ``HSET``,
``ZADD``, ...). Queued through a redis-py pipeline each costs about 10 µs of client CPU
(command objects, per-reply parsing layers); here they are packed by hiredis and the
replies parsed by one hiredis reader, about 1.5 µs each. The exchange borrows a connection
of the client's pool (already connected, authenticated and on the right database) and gives
it back; a connection that failed midway is closed, never reused half-read.
"""

from __future__ import annotations

import socket
from typing import Any, Sequence

import hiredis

from parity.errors import ParityError


class RawExchangeError(ParityError):
    """The connection failed during a bulk exchange (nothing is known of the unread replies)."""


def pack(command: Sequence[Any]) -> bytes:
    """One command in the Redis protocol (str, bytes, int or float arguments)."""
    return hiredis.pack_command(tuple(command))


class RawConnection:
    """``with RawConnection(client) as raw: replies = raw.exchange(commands)``."""

    def __init__(self, client):
        self.pool = client.connection_pool
        self.conn = None

    def __enter__(self) -> "RawConnection":
        try:
            self.conn = self.pool.get_connection()
        except TypeError:  # redis-py before 5.3 needs a command name
            self.conn = self.pool.get_connection("PING")
        self.conn.connect()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self.conn.disconnect()
        self.pool.release(self.conn)
        self.conn = None

    def exchange(self, packed: Sequence[bytes], expected: int | None = None) -> list:
        """Send the packed commands at once; return their replies (an error reply is a
        ``hiredis.ReplyError`` value, not raised). ``expected``: replies to read (default:
        one per command)."""
        want = len(packed) if expected is None else expected
        sock = self.conn._sock
        try:
            sock.sendall(b"".join(packed))
            reader = hiredis.Reader()
            replies: list = []
            buffer = bytearray(1 << 20)
            while len(replies) < want:
                got = sock.recv_into(buffer)
                if not got:
                    raise RawExchangeError("Redis closed the connection during a bulk exchange")
                reader.feed(buffer, 0, got)
                while True:
                    reply = reader.gets()
                    if reply is False:
                        break
                    replies.append(reply)
            return replies
        except (OSError, socket.timeout) as exc:
            self.conn.disconnect()
            raise RawExchangeError(f"Redis connection failed during a bulk exchange: {exc}") from exc

    def send_transaction(self, packed: Sequence[bytes]) -> None:
        """Send ``MULTI``, the packed commands and ``EXEC``; :meth:`receive_transaction`
        reads the replies (the connection must not be used in between)."""
        try:
            self.conn._sock.sendall(b"".join([_MULTI, *packed, _EXEC]))
        except (OSError, socket.timeout) as exc:
            self.conn.disconnect()
            raise RawExchangeError(f"Redis connection failed during a bulk exchange: {exc}") from exc

    def receive_transaction(self, n: int) -> list:
        """The replies of a transaction of ``n`` commands sent by :meth:`send_transaction`:
        ``MULTI``'s, each command's and ``EXEC``'s, like :meth:`exchange`. Each queued
        command's reply is ``+QUEUED`` unless Redis refused it; those are checked as bytes,
        and only the ``EXEC`` reply is parsed (when some other reply came, everything is
        parsed). A refused command is a ``hiredis.ReplyError`` value in its place."""
        sock = self.conn._sock
        expect = b"+OK\r\n" + b"+QUEUED\r\n" * n
        try:
            data = bytearray()
            buffer = bytearray(1 << 20)
            while len(data) < len(expect):
                got = sock.recv_into(buffer)
                if not got:
                    raise RawExchangeError("Redis closed the connection during a bulk exchange")
                checked = len(data)
                data += buffer[:got]
                upto = min(len(data), len(expect))
                if data[checked:upto] != expect[checked:upto]:
                    return self._replies(data, buffer, n + 2)  # some command was refused
            reader = hiredis.Reader()
            reader.feed(bytes(data[len(expect):]))
            while True:
                reply = reader.gets()
                if reply is not False:
                    break
                got = sock.recv_into(buffer)
                if not got:
                    raise RawExchangeError("Redis closed the connection during a bulk exchange")
                reader.feed(buffer, 0, got)
            return [b"OK"] + [b"QUEUED"] * n + [reply]
        except (OSError, socket.timeout) as exc:
            self.conn.disconnect()
            raise RawExchangeError(f"Redis connection failed during a bulk exchange: {exc}") from exc

    def transaction(self, packed: Sequence[bytes]) -> list:
        """:meth:`send_transaction` then :meth:`receive_transaction`."""
        self.send_transaction(packed)
        return self.receive_transaction(len(packed))

    def _replies(self, data: bytearray, buffer: bytearray, want: int) -> list:
        """Parse ``want`` replies: those in ``data``, then what the socket brings."""
        reader = hiredis.Reader()
        reader.feed(bytes(data))
        replies: list = []
        while len(replies) < want:
            reply = reader.gets()
            if reply is not False:
                replies.append(reply)
                continue
            got = self.conn._sock.recv_into(buffer)
            if not got:
                raise RawExchangeError("Redis closed the connection during a bulk exchange")
            reader.feed(buffer, 0, got)
        return replies


_MULTI = pack((b"MULTI",))
_EXEC = pack((b"EXEC",))
