"""The ``application_name`` of pg_beat's sessions: ``pg_beat:<token>:<replica>:<role>``.

PostgreSQL keeps 63 bytes of an application name. Two replicas whose names share a long
prefix would be told apart by nothing once cut, so every name starts with the token of the
:class:`~pg_beat.store.connections.Connector` that opened the session (8 hex digits drawn at
random, one per beat process), where no cut reaches it; the replica name is shortened instead,
so that the role at the end stays readable too. A session is tied to a process by its token,
never by a (possibly cut) replica name.

The SQL fragments here are for the store's statements, which match sessions the same way.
"""

from __future__ import annotations

import secrets

PREFIX = "pg_beat:"
#: What PostgreSQL keeps of an application name (NAMEDATALEN - 1).
MAX_CHARS = 63
TOKEN_CHARS = 8
#: ``pg_beat:<token>:``, the part that names the process.
HEAD_CHARS = len(PREFIX) + TOKEN_CHARS + 1

# POSIX regular expression: the name carries a token (sessions of pg_beat before the token,
# and pg_beat's own one-off tools such as ``pg_beat:migrate``, do not).
SQL_HAS_TOKEN = f"'^{PREFIX}[0-9a-f]{{{TOKEN_CHARS}}}:'"


def new_token() -> str:
    """A token for one process's sessions: 8 hex digits."""
    return secrets.token_hex(TOKEN_CHARS // 2)


def head(token: str) -> str:
    """``pg_beat:<token>:``: every session opened with ``token`` has a name starting so."""
    return f"{PREFIX}{token}:"


def format_name(token: str, replica: str, role: str) -> str:
    """The session's name, at most 63 characters: the replica name is what gets shortened.

    Characters PostgreSQL would not keep (beyond printable ASCII) are sent as ``?``, one per
    character, so that the server stores this very string and the cut falls where we chose.
    """
    start, end = head(token), f":{role}"
    room = max(0, MAX_CHARS - len(start) - len(end))
    return (start + _printable(replica)[:room] + end)[:MAX_CHARS]


def _printable(value: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in value)


def sql_is_replica(name: str, replica: str) -> str:
    """A SQL condition: the application name ``name`` (an expression) is one that
    :func:`format_name` makes for the replica ``replica`` (an expression), whatever the token
    and role. A replica name shortened by the cut matches every replica sharing that prefix:
    use it to show sessions, never to terminate them."""
    role = f"substring({name} from '[^:]*$')"
    printable = f"regexp_replace({replica}, '[^ -~]', '?', 'g')"
    return (
        f"({name} ~ {SQL_HAS_TOKEN} AND {name} = "
        f"left(left({name}, {HEAD_CHARS}) || {printable}, {MAX_CHARS - 1} - length({role}))"
        f" || ':' || {role})"
    )
