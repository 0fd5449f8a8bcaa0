"""Every SQL statement pg_beat runs, and the connections it runs them on.

The rest of the package never builds SQL: it calls these functions with a SQLAlchemy
``Connection`` (or a psycopg connection from :class:`Connector`). Statements are plain text so
that what runs is what a DBA reads in ``pg_stat_activity``. One module per concern:

- :mod:`.connections`: the Connector (URL, session settings, pool mode), LISTEN;
- :mod:`.lease`: the lease row, the advisory lock, takeover, renewal, release;
- :mod:`.claims`: the fence, due rows, planning and claiming ticks;
- :mod:`.runs`: the run log (sent, failed, orphaned claims, pruning);
- :mod:`.audit`: what ``pg-beat runs audit`` reads, in batches and pages;
- :mod:`.schedules`: schedule management and the ``beat_schedule`` sync;
- :mod:`.health`: outcomes read back: schedule health, runtimes, counts by outcome;
- :mod:`.diagnostics`: sessions, locks and blockers, replicas, status and metrics figures;
- :mod:`.revisions`: the schema's compatibility records and invalid indexes;
- :mod:`.appnames`: the ``application_name`` of every pg_beat session;
- :mod:`.grants`: what ``pg-beat db grant`` grants.

Callers name the concern: ``store.lease.renew(...)``, ``store.claims.fence(...)``; a reader
looking for a statement finds it in one step, by the module its concern names.
"""

from __future__ import annotations

from pg_beat.store import (
    appnames,
    audit,
    claims,
    connections,
    diagnostics,
    grants,
    health,
    lease,
    revisions,
    runs,
    schedules,
)

__all__ = [
    "appnames",
    "audit",
    "claims",
    "connections",
    "diagnostics",
    "grants",
    "health",
    "lease",
    "revisions",
    "runs",
    "schedules",
]
