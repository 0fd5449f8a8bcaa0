"""What a failed publish means, and how long one may take.

A publish error is either *transient* (the broker or the link is down: retry in order, every
tick waits) or *permanent* (this one message can never go out: record it failed and go on).
Only errors raised before the message is handed to the broker are permanent at once: it does
not serialise, its options are wrong, it is over ``pg_beat_max_message_bytes``. Anything the
broker or the wire says (a lost connection, a timeout, a channel closed over a permission or
routing error) is transient: the broker may say the same of every tick, and that is an
outage. The publisher finds a message the broker refuses alone by trying the next one (see
:mod:`pg_beat.publish.publisher`).

A publish that starts before the lease's local deadline must end before the lease can expire,
or an ex-leader's message could land after its successor re-sent the tick: every socket
operation of the scheduler's broker connection is bounded by a fraction of the publish margin.
"""

from __future__ import annotations

import socket
from typing import Any

from pg_beat.exceptions import MessageTooLarge

__all__ = [
    "MIN_PUBLISH_MARGIN",
    "MIN_TIMEOUT",
    "MessageTooLarge",
    "connection_options",
    "is_permanent",
]

#: Seconds: the shortest connect and socket timeout the broker connection gets.
MIN_TIMEOUT = 0.05
#: Seconds: the smallest publish margin that holds a connect and a write at those timeouts.
MIN_PUBLISH_MARGIN = 2 * MIN_TIMEOUT


def is_permanent(exc: BaseException) -> bool:
    """True when this message can never be handed to the broker: publishing it again cannot
    succeed. Broker and wire errors are never permanent here (see the module's docstring)."""
    if is_broker_error(exc):
        return False
    if isinstance(exc, (MessageTooLarge, TypeError, ValueError, KeyError)):
        # Bad options (e.g. task_id in options), unserialisable arguments, a bad priority.
        return True
    try:
        from kombu.exceptions import ContentDisallowed, EncodeError
    except ImportError:  # pragma: no cover - kombu comes with Celery
        return False
    return isinstance(exc, (EncodeError, ContentDisallowed))


def is_broker_error(exc: BaseException) -> bool:
    """True for what the broker or the wire said: a connection, socket or channel error,
    whatever else its type is (a redis-py or py-amqp error may also be a ValueError)."""
    if isinstance(exc, (OSError, ConnectionError, TimeoutError)):
        return True
    try:
        from kombu.exceptions import OperationalError
    except ImportError:  # pragma: no cover - kombu comes with Celery
        return False
    if isinstance(exc, OperationalError):
        return True
    try:
        from amqp.exceptions import AMQPError
    except ImportError:
        pass
    else:
        # 403 access refused, 404 no such exchange, 406 precondition failed: the broker
        # closed the channel. Every tick may get the same (a permission or routing change).
        if isinstance(exc, AMQPError):
            return True
    try:
        from redis.exceptions import RedisError
    except ImportError:
        return False
    return isinstance(exc, RedisError)


def is_channel_error(exc: BaseException) -> bool:
    """True when the broker closed the channel (AMQP): the producer needs a new one."""
    try:
        from amqp.exceptions import ChannelError
    except ImportError:
        return False
    return isinstance(exc, ChannelError)


def connection_options(transport: str, publish_margin: float) -> dict[str, Any]:
    """Keyword arguments for ``app.connection_for_write()`` of the scheduler.

    Connect and socket timeouts of half the publish margin each (a connect and a write fit in
    it). ``TCP_USER_TIMEOUT`` of half the margin too: bytes of a publish that the kernel is
    still retransmitting are dropped then, even after the socket was closed or the process
    exited, so a link that comes back cannot deliver them after the lease expired. Publisher
    confirms on AMQP, so that "sent" means the broker took the message and a refusal is
    reported for the message that caused it.
    """
    timeout = max(publish_margin / 2, MIN_TIMEOUT)
    user_timeout = max(int(timeout * 1000), int(MIN_TIMEOUT * 1000))
    if transport in ("redis", "rediss", "sentinel"):
        options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "socket_keepalive": True,
            "socket_keepalive_options": {_TCP_USER_TIMEOUT: user_timeout},
        }
        return {"transport_options": options, "connect_timeout": timeout}
    if transport in ("amqp", "pyamqp", "amqps"):
        options = {
            "confirm_publish": True,
            "read_timeout": timeout,
            "write_timeout": timeout,
            "socket_settings": {_TCP_USER_TIMEOUT: user_timeout},
        }
        return {"transport_options": options, "connect_timeout": timeout}
    return {"connect_timeout": timeout}


# Linux's value where the socket module does not name it (it does from Python 3.6 on Linux).
_TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)
