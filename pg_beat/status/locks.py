"""Pure judgement of the locks on pg_beat's tables and leadership key (``store.lock_activity``
rows): which sessions block pg_beat, the most harmful first, who holds the key from outside
pg_beat, which lock kept a section unreadable, and the one-line descriptions of them all."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pg_beat.leadership.lease import LeaseStatus, LeaseView
from pg_beat.status.rows import Row, seconds
from pg_beat.status.text import duration

__all__ = [
    "BLOCKS_WRITES",
    "LOCK_MODES",
    "ROW_LOCKING",
    "SECTION_TABLES",
    "Blocker",
    "describe_blocker",
    "describe_lock",
    "explain_unreadable",
    "find_blockers",
    "is_pg_beat",
    "is_table_lock",
    "lock_target",
    "outside_key_holder",
    "row_age",
    "strongest_locks",
    "who",
]


# Table lock modes, weakest first. From SHARE on, a mode conflicts with the row changes every
# pg_beat replica makes; ACCESS EXCLUSIVE also with plain reads (status's own sections).
LOCK_MODES = (
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
)
BLOCKS_WRITES = frozenset(LOCK_MODES[4:])
ROW_LOCKING = frozenset({"RowShareLock", "RowExclusiveLock"})  # FOR UPDATE/SHARE; UPDATE

#: The pg_beat table each section reads: a lock on it explains why the section is unreadable.
SECTION_TABLES = {
    "lease": "pg_beat_leases",
    "replicas": "pg_beat_replicas",
    "failovers": "pg_beat_leader_terms",
    "next_due": "pg_beat_schedules",
    "failing_schedules": "pg_beat_schedules",
    "task_health": "pg_beat_schedules",
}


@dataclass(frozen=True)
class Blocker:
    """A session that keeps pg_beat waiting, or will: ``lock`` is its strongest lock on
    pg_beat's tables or key (a :func:`store.lock_activity` row), ``blocks`` the waiting rows
    of the pg_beat sessions it holds up."""

    lock: Row
    why: str  # 'table lock', 'blocks', 'queued' or 'lease row'
    blocks: tuple[Row, ...] = ()

    @property
    def pid(self) -> int | None:
        pid: int | None = self.lock.get("pid")
        return pid


def is_pg_beat(row: Row) -> bool:
    """The session is one of pg_beat's (every pg_beat connection is named ``pg_beat:...``)."""
    return str(row.get("application_name") or "").startswith("pg_beat:")


def _strength(row: Row) -> tuple[bool, bool, int]:
    mode = row.get("mode")
    rank = LOCK_MODES.index(mode) if mode in LOCK_MODES else -1
    return (bool(row.get("granted")), is_table_lock(row), rank)


def is_table_lock(row: Row) -> bool:
    """A lock on a whole pg_beat table (not a row's tuple lock, taken while waiting for it)."""
    return row.get("locktype") == "relation" and row.get("relname") is not None


def strongest_locks(locks: Sequence[Row]) -> dict[int | None, Row]:
    """Each session's most telling lock: held before awaited, a table's before the key's."""
    best: dict[int | None, Row] = {}
    for row in locks:
        pid = row.get("pid")
        if pid not in best or _strength(row) > _strength(best[pid]):
            best[pid] = row
    return best


def _pg_beat_waits(locks: Sequence[Row], best: Mapping[int | None, Row]) -> dict[int, list[Row]]:
    """Blocker pid -> the waiting lock rows of the pg_beat sessions it holds up. Standbys
    queued on the leadership key behind another pg_beat session are doing their job."""
    waiting = {row.get("pid") for row in locks if not row.get("granted")}
    waits: dict[int, list[Row]] = {}
    for row in locks:
        if row.get("granted") or not is_pg_beat(row):
            continue
        for pid in row.get("blocked_by") or ():
            holder = best.get(pid)
            if row.get("is_key") and (holder is None or is_pg_beat(holder)):
                continue
            # A pg_beat session that waits itself (first in line for a row) is not the cause:
            # whoever it waits for is.
            if holder is not None and is_pg_beat(holder) and pid in waiting:
                continue
            if pid != row.get("pid"):
                waits.setdefault(pid, []).append(row)
    return waits


def outside_key_holder(locks: Sequence[Row], view: LeaseView | None) -> Row | None:
    """The session holding the leadership key that is no pg_beat replica, when that keeps
    every replica from leading (the lease is not held)."""
    if view is not None and view.status in (LeaseStatus.HELD, LeaseStatus.HUNG):
        return None
    for row in locks:
        if row.get("is_key") and row.get("granted") and not is_pg_beat(row):
            return row
    return None


def find_blockers(locks: Sequence[Row], view: LeaseView | None) -> list[Blocker]:
    """Sessions that block pg_beat, the most harmful first: a lock on a pg_beat table that
    stops its writes, then whoever pg_beat sessions wait for, then a queued request for such
    a lock (everything after it queues too), then, while the lease is not held, a session
    other than pg_beat's that holds row locks on the lease table (it stops renewals and
    takeovers). The leadership key held by an outsider is :func:`outside_key_holder`'s."""
    best = strongest_locks(locks)
    waits = _pg_beat_waits(locks, best)
    found: dict[int | None, Blocker] = {}

    def add(row: Row, why: str) -> None:
        pid = row.get("pid")
        if pid not in found:
            found[pid] = Blocker(best.get(pid, row), why, tuple(waits.get(pid or -1, ())))

    for row in locks:
        if row.get("granted") and is_table_lock(row) and row.get("mode") in BLOCKS_WRITES:
            add(row, "table lock")
    for pid in sorted(waits, key=lambda p: -len(waits[p])):
        add(best.get(pid, {"pid": pid}), "blocks")
    for row in locks:
        if not row.get("granted") and is_table_lock(row) and row.get("mode") in BLOCKS_WRITES:
            add(row, "queued")
    if view is not None and view.status is not LeaseStatus.HELD:
        for row in locks:
            if (
                row.get("granted")
                and is_table_lock(row)
                and row.get("relname") == "pg_beat_leases"
                and row.get("mode") in ROW_LOCKING
                and not is_pg_beat(row)
            ):
                add(row, "lease row")
    return list(found.values())


def lock_target(row: Row) -> str:
    """What a lock row is on: ``pg_beat_schedules``, ``advisory key pg_beat:default``..."""
    if row.get("is_key"):
        return f"advisory key {row.get('lock_key')}"
    relname, locktype = row.get("relname"), row.get("locktype")
    if relname and locktype == "relation":
        return str(relname)
    if relname:
        return f"a row of {relname}"
    if locktype == "transactionid":
        return f"a row locked by transaction {row.get('xid')}"
    return str(locktype or "?")


def who(row: Row) -> str:
    """``pid 4242 (psql, user alice)``."""
    if row.get("pid") is None:
        return "a prepared transaction"
    app = row.get("application_name") or "?"
    return f"pid {row['pid']} ({app}, user {row.get('user_name') or '?'})"


def describe_lock(row: Row) -> str:
    """``pid 4242 (psql, user alice) holds AccessExclusiveLock on pg_beat_schedules for 12s``."""
    if row.get("mode") is None:
        return f"{who(row)} blocks"
    verb = "holds" if row.get("granted") else "waits for"
    text = f"{who(row)} {verb} {row['mode']} on {lock_target(row)} for {duration(row_age(row))}"
    behind = [pid for pid in row.get("blocked_by") or () if pid != row.get("pid")]
    if not row.get("granted") and behind:
        text += ", behind pid " + ", ".join(str(pid) for pid in behind)
    state = str(row.get("state") or "")
    if state.startswith("idle in transaction"):
        text += f" ({state})"
    return text


def row_age(row: Row) -> float | None:
    return seconds(row.get("age"))


def describe_blocker(blocker: Blocker) -> str:
    """The blocker's lock, then the first pg_beat session it holds up."""
    text = describe_lock(blocker.lock)
    if blocker.blocks:
        first = blocker.blocks[0]
        text += (
            f"; pg_beat waits behind it: pid {first.get('pid')} "
            f"({first.get('application_name') or '?'})"
        )
        if len(blocker.blocks) > 1:
            text += f" and {len(blocker.blocks) - 1} more"
    return text


def explain_unreadable(unreadable: Mapping[str, str], locks: Sequence[Row]) -> dict[str, str]:
    """Each unreadable section's reason, naming the session whose lock on its table (ACCESS
    EXCLUSIVE, held or queued: the only mode a read waits for) kept it out."""
    out = {}
    for section, reason in unreadable.items():
        table = SECTION_TABLES.get(section)
        holders = [
            row
            for row in locks
            if table
            and is_table_lock(row)
            and row.get("relname") == table
            and row.get("mode") == "AccessExclusiveLock"
        ]
        holders.sort(key=lambda row: not row.get("granted"))
        out[section] = f"{reason}: {describe_lock(holders[0])}" if holders else reason
    return out


def key_rows(locks: Sequence[Row] | None) -> list[Row] | None:
    """The locks on the leadership key, holders and waiters (None when unread)."""
    return None if locks is None else [row for row in locks if row.get("is_key")]
