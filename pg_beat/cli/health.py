"""What the health displays share: the ``--overdue-factor`` option of ``schedules list``,
``schedules show`` and ``status``."""

from __future__ import annotations

import click

#: The default of ``--overdue-factor``: ``pg_beat_overdue_factor``'s.
DEFAULT_OVERDUE_FACTOR = 2.0

overdue_factor_option = click.option(
    "--overdue-factor",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_OVERDUE_FACTOR,
    show_default=True,
    envvar="PG_BEAT_OVERDUE_FACTOR",
    help="A schedule is overdue when its last success (untracked: its last run) is older "
    "than this many periods [env PG_BEAT_OVERDUE_FACTOR]; set it as pg_beat_overdue_factor.",
)
