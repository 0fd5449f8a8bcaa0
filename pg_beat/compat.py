"""May this pg_beat run against the database's schema? (design invariant 18)

Pure logic: the inputs are this code's chain of revisions (oldest first, ending at its head),
the database's revision, and, for a revision this code does not know, the oldest code revision
that revision declares it may run with (its row in ``pg_beat_schema_compat``, written by the
migration that applied it). Reading them is :mod:`pg_beat.migrate`'s business.

- at this code's head: run;
- at an earlier revision of this code's chain, or never migrated: the database is behind,
  ``pg-beat db upgrade``;
- at a revision this code does not know (a later release migrated it): run if that revision
  names, as the oldest code that may run against it, a revision of this code's chain; else
  this code is behind (upgrade pg_beat, or roll the database back with the newer pg_beat).

A row written by a future migration is read by this code as it is: its two columns
(``revision``, ``oldest_code_revision``) are a contract with every release from 0003 on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum


class Verdict(Enum):
    """Where the database's schema stands relative to this code."""

    AT_HEAD = "at_head"  # the revision this code was released with
    BEHIND = "behind"  # an earlier revision (or none): migrate the database
    AHEAD = "ahead"  # a later revision that declares this code compatible: run
    INCOMPATIBLE = "incompatible"  # a later revision that needs later code (or says nothing)


@dataclass(frozen=True)
class SchemaState:
    """The verdict on a database at revision ``database`` for code at ``code``."""

    verdict: Verdict
    database: str | None
    code: str
    #: For a revision this code does not know: the oldest code revision it declares, if any.
    oldest_code: str | None = None

    @property
    def runs(self) -> bool:
        """Whether this code may run against the database."""
        return self.verdict in (Verdict.AT_HEAD, Verdict.AHEAD)

    def problem(self) -> str | None:
        """Why this code may not run, naming the side that is behind and the command that
        fixes it; None when it may."""
        if self.verdict is Verdict.BEHIND:
            return (
                f"database schema is at revision {self.database or 'none (not migrated)'}, "
                f"behind this pg_beat, which needs {self.code}: run 'pg-beat db upgrade'"
            )
        if self.verdict is Verdict.INCOMPATIBLE:
            needs = (
                f"which needs pg_beat code at revision {self.oldest_code} or later"
                if self.oldest_code is not None
                else "which this pg_beat does not know and which declares no oldest "
                "compatible code revision"
            )
            return (
                f"database schema is at {self.database}, {needs}; this pg_beat is at "
                f"{self.code}: upgrade pg_beat (or roll back with 'pg-beat db downgrade "
                f"{self.code}' run by the pg_beat that migrated it)"
            )
        return None

    def describe(self) -> str:
        """One line for beat's banner and ``pg-beat db current``."""
        if self.verdict is Verdict.AT_HEAD:
            return f"at {self.code} (ok)"
        if self.verdict is Verdict.AHEAD:
            return (
                f"at {self.database}, ahead of this pg_beat ({self.code}), which it declares "
                f"compatible (code from {self.oldest_code} on) (ok)"
            )
        return f"MISMATCH: {self.problem()}"


def judge(database: str | None, chain: Sequence[str], oldest_code: str | None) -> SchemaState:
    """The verdict on a database at revision ``database`` (None: never migrated) for code whose
    revisions are ``chain`` (oldest first, its head last); ``oldest_code`` is the oldest code
    revision that ``database`` declares, when ``database`` is not in ``chain``."""
    if not chain:
        raise ValueError("this code has no revisions")
    head = chain[-1]
    if database == head:
        return SchemaState(Verdict.AT_HEAD, database, head)
    if database is None or database in chain:
        return SchemaState(Verdict.BEHIND, database, head)
    if oldest_code is not None and oldest_code in chain:
        return SchemaState(Verdict.AHEAD, database, head, oldest_code)
    return SchemaState(Verdict.INCOMPATIBLE, database, head, oldest_code)
