"""Cluster status for ``pg-beat status`` and ``pg-beat check``: gather, judge, render.

:func:`gather` reads each section in a short transaction of its own, bounded by ``SET LOCAL
lock_timeout`` and ``statement_timeout``, so a migration's ACCESS EXCLUSIVE lock or a forgotten
``FOR UPDATE`` costs one section, never the whole report; what could not be read is said, with
the session that blocks it. The locks (``pg_locks``, which never waits on a table lock) are
read first. :func:`verdict`, :func:`find_blockers` and :func:`replica_role` are pure (rows and
the database clock in), so each judgement is tested with plain dicts; :func:`render` and
:func:`as_json` format the result. Ages are seconds on the database clock, never the caller's.
One module per concern, each name re-exported here:

- :mod:`.judge`: the verdict on the leader and the cluster, replica roles (pure);
- :mod:`.locks`: who blocks pg_beat, who holds the leadership key, why a section was
  unreadable (pure);
- :mod:`.report`: the results, :class:`ClusterStatus` and :class:`Health`;
- :mod:`.reader`: :class:`SectionReader`, one bounded transaction per section;
- :mod:`.gathering`: :func:`gather` and :func:`check`, which read the database;
- :mod:`.encode`: the documented JSON, :func:`dumps`;
- :mod:`.rendering`: the text report;
- :mod:`.text`: ages, times, shortened text and aligned columns, shared with the CLI;
- :mod:`.rows`: the ``Row`` type, intervals as seconds, cutting other sessions' queries.
"""

from __future__ import annotations

from pg_beat.status.encode import *  # noqa: F403
from pg_beat.status.gathering import *  # noqa: F403
from pg_beat.status.judge import *  # noqa: F403
from pg_beat.status.locks import *  # noqa: F403
from pg_beat.status.reader import *  # noqa: F403
from pg_beat.status.rendering import *  # noqa: F403
from pg_beat.status.report import *  # noqa: F403
from pg_beat.status.rows import *  # noqa: F403
from pg_beat.status.text import *  # noqa: F403
