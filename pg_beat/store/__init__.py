"""Every SQL statement pg_beat runs, and the connections it runs them on.

The rest of the package never builds SQL: it calls these functions with a SQLAlchemy
``Connection`` (or a psycopg connection from :class:`Connector`). Statements are plain text so
that what runs is what a DBA reads in ``pg_stat_activity``. One module per concern:

- :mod:`.connections`: the Connector (URL, session settings, pool mode), LISTEN;
- :mod:`.lease`: the lease row, the advisory lock, takeover, renewal, release;
- :mod:`.claims`: the fence, due rows, planning and claiming ticks;
- :mod:`.runs`: the run log (sent, failed, orphaned claims, pruning);
- :mod:`.schedules`: schedule management and the ``beat_schedule`` sync;
- :mod:`.diagnostics`: sessions, locks and blockers, replicas, status and metrics figures;
- :mod:`.revisions`: the schema's compatibility records and invalid indexes (imported as
  ``from pg_beat.store import revisions``, not re-exported here).
"""

from __future__ import annotations

from pg_beat.store.claims import *  # noqa: F403
from pg_beat.store.connections import *  # noqa: F403
from pg_beat.store.diagnostics import *  # noqa: F403
from pg_beat.store.lease import *  # noqa: F403
from pg_beat.store.runs import *  # noqa: F403
from pg_beat.store.schedules import *  # noqa: F403
