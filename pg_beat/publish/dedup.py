"""At most one copy of a tick in a Redis queue, however often it is published.

A publish whose reply is lost is uncertain: Redis may have run it. That happens when Redis stalls
(a fork, a failover, SIGSTOP) past the publish's socket timeout: the commands wait in the
server's socket buffer and run when it answers again, after the publisher has given up on them
and sent them again. Retrying is right (the first copy may never have landed), so the push
itself is made idempotent: on Redis every message of pg_beat is pushed by a small script that
first sets a marker named after the tick's task id (``SET ... NX``) and pushes only if the
marker was not there yet. Both run in one script, so Redis runs both or neither.

Any number of tries of the same tick (a retry after a lost reply, copies that waited in a
stalled server's buffer, a new leader re-publishing an orphan that its predecessor did push)
leave one message in the queue while the marker lives (MARKER_TTL, far longer than any retry
or failover takes). The marker keys cost about 100 bytes per tick sent in the last hour.

This rides on kombu's Redis publish batch (kombu 5.7+): the commands a message needs are
added one by one to the batch's pipeline, and the LPUSH of the message is replaced by the
script. Where that interface is missing, publishing works as before, and a lost reply can
duplicate what it covered (see docs/semantics.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MARKER_PREFIX = "pg_beat:published:"
MARKER_TTL = 3600  # seconds a tick's marker lives
#: KEYS: the marker, the queue's list; ARGV: the message, the marker's TTL.
PUSH_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[2])) then
    return redis.call('LPUSH', KEYS[2], ARGV[1])
end
return 0
"""


def marker_key(task_id: str, prefix: str = "") -> str:
    """The Redis key that says the tick of ``task_id`` was pushed (``prefix``: kombu's
    ``global_keyprefix``)."""
    return f"{prefix}{MARKER_PREFIX}{task_id}"


def install(channel: Any, task_id: Callable[[], str | None]) -> bool:
    """Make the publish batches of kombu Redis ``channel`` push each message once per task id
    (``task_id`` says which message is being published; None: push it as kombu would). True
    when the channel has the interface (and now pushes once); False leaves it as it was."""
    create = getattr(channel, "create_publish_batch", None)
    if create is None:
        return False
    if getattr(channel, "_pg_beat_push_once", False):
        return True
    # kombu's prefixed client prefixes the keys of the commands it knows, and not EVAL's.
    prefix = str(getattr(channel, "global_keyprefix", "") or "")

    def create_publish_batch(max_size: int) -> Any:
        batch = create(max_size)
        add = getattr(batch, "add", None)
        if add is None:
            return batch

        def push_once(name: str, *args: Any) -> Any:
            tick = task_id()
            if name != "lpush" or tick is None or len(args) != 2:
                return add(name, *args)
            queue, payload = args
            return add(
                "eval", PUSH_ONCE, 2, marker_key(tick, prefix), prefix + queue, payload, MARKER_TTL
            )

        batch.add = push_once
        return batch

    channel.create_publish_batch = create_publish_batch
    channel._pg_beat_push_once = True
    return True
