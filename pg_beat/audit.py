"""The run audit (``pg-beat runs audit``): a schedule's due times against its run log and the
executions its workers recorded, as findings. Pure: the clock (``now``) and every row are
arguments; :mod:`pg_beat.store.audit` reads them.

Which due times are expected (we keep no edit history, so the rule never guesses):

- only those strictly after ``since`` and after the schedule was planned: a schedule created
  or edited in the window (any edit through SQL or the API bumps ``updated_at``: a
  definition, ``enabled``, its arguments, a run-now) is checked from its last edit on, or from
  the end of the leaderless gap it was made in (no leader could plan it before). An interval
  with no ``start_time`` is first due one interval after it was planned, so it is checked from
  one interval after that; its grid is the one through ``last_due_at`` (else ``resume_at``,
  else ``next_run_at``), exactly as the scheduler extends it;
- only up to ``min(until, now - settle)``: a tick due less than ``settle`` ago may still be on
  its way; a schedule that is disabled, parked or not yet planned is checked only up to its
  ``last_due_at`` (when the scheduler stopped it, or it was disabled, is not recorded);
- due times come from :func:`pg_beat.schedules.next_after`, the scheduler's own math
  (timezone, DST, ``start_time``, ``end_time``).

Limits: ticks before a schedule's last edit are not compared with any definition (their run
rows are still checked: failed, lost, started twice...); an interval planned more than one
interval after its edit by a live leader (a claim that far behind) shows the grid times in
between as missing; a schedule deleted takes its run rows with it. Run rows at due times
the math does not produce (run now, an earlier definition) are info, not findings.

Findings per tick: ``missing`` (no run row), ``late`` (sent more than the grace after its due
time, unless its reason says it was held back on purpose: ``buffered: ...``), ``unsent``
(claimed, never sent after ``settle``), ``never_started`` (sent ``settle`` ago, no worker
started it, and the schedule is tracked: it has executions or a health row), ``started_twice``
(more than one first or redelivered execution: the body ran twice), ``failed`` (not published,
or the task failed), ``lost``, ``revoked``, ``skipped`` (with its reason, else a misfire) and
``expired``. A finding due while no leader held the lease says so; it is still a finding.
Ticks an overlap policy did not send (reason ``overlap: ...``: the user asked for that) and
duplicate deliveries acknowledged without running are info.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Literal, get_args

from pg_beat import downtime, schedules
from pg_beat.exceptions import AuditTooLarge, InvalidSchedule
from pg_beat.publish.ticks import task_id_for
from pg_beat.schedules import ScheduleSpec

FindingKind = Literal[
    "missing",
    "late",
    "unsent",
    "never_started",
    "started_twice",
    "failed",
    "lost",
    "revoked",
    "skipped",
    "expired",
]
InfoKind = Literal["overlap_skipped", "duplicate_delivery", "unplanned_run", "partly_checked"]
FINDING_KINDS: tuple[str, ...] = get_args(FindingKind)
INFO_KINDS: tuple[str, ...] = get_args(InfoKind)

#: Most due times one schedule may have in an audit window: enumerating a crontab costs about
#: 40 µs a due time, so this bounds one schedule to seconds; a wider window is refused.
MAX_DUE_TIMES = 200_000
#: A run held back by ``buffer_one`` and sent when the previous run finished: late by design.
BY_DESIGN_PREFIX = "buffered:"
#: Outcomes after which a run is over (``retry``: another attempt is pending).
FINAL_OUTCOMES = frozenset({"success", "failure", "revoked", "lost"})
#: A tick its overlap policy (skip, buffer_one) did not send, as the user asked: info.
OVERLAP_PREFIX = "overlap:"


@dataclass(frozen=True)
class Window:
    """What to audit: due times in (``since``, ``until``], judged at ``now``. ``settle`` (s):
    how long a tick may take to be claimed, sent or started before it is a finding; ``grace``
    (s): how late a send may be (``pg_beat_misfire_grace_time``)."""

    since: datetime
    until: datetime
    now: datetime
    settle: float
    grace: float
    group: str = "default"
    #: Seconds a started run may go without an outcome (``pg_beat_max_runtime``), for
    #: schedules without their own ``max_runtime``.
    max_runtime: float = 3600.0


@dataclass(frozen=True)
class ScheduleView:
    """A schedule row, as the audit needs it."""

    id: int
    name: str
    spec: ScheduleSpec
    enabled: bool
    created_at: datetime
    updated_at: datetime
    next_run_at: datetime | None
    last_due_at: datetime | None
    resume_at: datetime | None = None
    last_error: str | None = None
    #: Workers record its outcomes: it has executions or a health row.
    tracked: bool = False
    max_runtime: float | None = None


@dataclass(frozen=True)
class RunView:
    """A run row, with what its executions add up to."""

    due_at: datetime
    task_id: str
    status: str
    claimed_at: datetime
    sent_at: datetime | None = None
    reason: str | None = None
    error: str | None = None
    worker: str | None = None
    started_at: datetime | None = None
    outcome: str | None = None
    outcome_error: str | None = None
    #: Executions that ran the body (delivery ``first`` or ``redelivery``).
    bodies: int = 0
    #: Deliveries acknowledged without running (delivery ``duplicate``).
    duplicates: int = 0
    finished_at: datetime | None = None


@dataclass(frozen=True)
class Gap:
    """A time no leader held the lease: from ``start`` (None: before any leader) to ``end``
    (None: still none)."""

    start: datetime | None
    end: datetime | None

    def overlaps(self, low: datetime, high: datetime) -> bool:
        return (self.start is None or self.start <= high) and (self.end is None or low <= self.end)

    def describe(self) -> str:
        if self.start is None:
            until = "now" if self.end is None else _at(self.end)
            return f"no leader had held the lease before {until}"
        if self.end is None:
            return f"no leader has held the lease since {_at(self.start)}"
        return f"no leader held the lease from {_at(self.start)} to {_at(self.end)}"


@dataclass(frozen=True)
class TermRow:
    """A leader term (``pg_beat_leader_terms``), oldest epoch first."""

    epoch: int
    acquired_at: datetime
    previous_expires_at: datetime | None
    ended_at: datetime | None


@dataclass(frozen=True)
class LeaseRow:
    """The group's lease as it is now."""

    expires_at: datetime | None
    released_at: datetime | None


@dataclass(frozen=True)
class Finding:
    """One tick's problem, or (kind in :data:`INFO_KINDS`) something worth knowing."""

    kind: str
    schedule: str
    due_at: datetime | None
    task_id: str | None
    what: str
    why: str = ""


@dataclass
class Report:
    """Every finding counted; at most ``limit`` of each kind kept for display."""

    limit: int = 1000
    schedules: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINDING_KINDS, 0))
    info_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(INFO_KINDS, 0))
    findings: list[Finding] = field(default_factory=list)
    info: list[Finding] = field(default_factory=list)

    def add(self, item: Finding) -> None:
        counts, kept = (
            (self.counts, self.findings)
            if item.kind in self.counts
            else (self.info_counts, self.info)
        )
        counts[item.kind] += 1
        if counts[item.kind] <= self.limit:
            kept.append(item)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def clean(self) -> bool:
        return self.total == 0

    @property
    def truncated(self) -> bool:
        return any(n > self.limit for n in (*self.counts.values(), *self.info_counts.values()))


# --------------------------------------------------------------------------- leaderless gaps


def leaderless_gaps(
    terms: Sequence[TermRow], lease: LeaseRow | None, lease_ttl: float, now: datetime
) -> list[Gap]:
    """The times no leader held the lease, oldest first, as :mod:`pg_beat.downtime` counts
    them: before each term, from its predecessor's last proof of life to its start; after the
    last term, from its release or its lease's last renewal, when it is no longer held."""
    if lease is None and not terms:
        return [Gap(None, None)]  # no scheduler ever led this group
    gaps: list[Gap] = []
    previous: TermRow | None = None
    for term in terms:
        ended = previous.ended_at if previous is not None else None
        before = downtime.Term.after(term.acquired_at, term.previous_expires_at, ended, lease_ttl)
        alive = before.predecessor_alive
        if alive is None:
            if previous is None and term.previous_expires_at is None:
                gaps.append(Gap(None, term.acquired_at))
        elif alive < term.acquired_at:
            gaps.append(Gap(alive, term.acquired_at))
        previous = term
    if lease is not None:
        if lease.released_at is not None:
            gaps.append(Gap(lease.released_at, None))
        elif lease.expires_at is None:
            gaps.append(Gap(None, None))
        elif lease.expires_at <= now:
            gaps.append(Gap(lease.expires_at - timedelta(seconds=lease_ttl), None))
    return gaps


def _leaderless(gaps: Sequence[Gap], low: datetime, high: datetime) -> str:
    return "; ".join(gap.describe() for gap in gaps if gap.overlaps(low, high))


# --------------------------------------------------------------------------- expected ticks


def checked_range(
    schedule: ScheduleView, window: Window, gaps: Sequence[Gap] = ()
) -> tuple[datetime, datetime] | None:
    """(low, high): the due times in (low, high] that must have a run row; None: none must."""
    planned = planned_at(max(schedule.created_at, schedule.updated_at), gaps)
    if planned is None:
        return None  # no leader since its last edit: nothing planned it
    low = max(window.since, planned)
    spec = schedule.spec
    if spec.kind == "interval" and spec.start_time is None and spec.interval_seconds:
        # First due one interval after it was planned (schedules.first_due).
        low = max(low, planned + timedelta(seconds=spec.interval_seconds))
    high = min(window.until, window.now - timedelta(seconds=window.settle))
    if not schedule.enabled or schedule.next_run_at is None:
        # Stopped (disabled, parked, done) or not planned yet: when is not recorded.
        if schedule.last_due_at is None:
            return None
        high = min(high, schedule.last_due_at)
    return (low, high) if low < high else None


def planned_at(edit: datetime, gaps: Sequence[Gap]) -> datetime | None:
    """The earliest a leader can have planned a schedule edited at ``edit``: then, or when the
    leaderless gap around it ended (None: it has not ended). A gap starts at the last proof of
    life, so this errs late: fewer due times expected, never one that did not exist."""
    for gap in gaps:
        if gap.overlaps(edit, edit):
            return gap.end
    return edit


def expected_due_times(schedule: ScheduleView, low: datetime, high: datetime) -> Iterator[datetime]:
    """The due times in (``low``, ``high``], oldest first; raises :class:`AuditTooLarge`
    beyond :data:`MAX_DUE_TIMES`."""
    spec = schedule.spec
    if spec.kind == "interval" and spec.start_time is None:
        yield from _grid_due_times(schedule, low, high)
        return
    count, due = 0, schedules.next_after(spec, low)
    while due is not None and due <= high:
        count += 1
        if count > MAX_DUE_TIMES:
            raise _too_large(schedule)
        yield due
        due = schedules.next_after(spec, due)


def _grid_due_times(schedule: ScheduleView, low: datetime, high: datetime) -> Iterator[datetime]:
    """An interval without ``start_time``: the grid through the last due time the scheduler
    recorded (it extends the grid from there: next = previous + interval)."""
    spec = schedule.spec
    anchor = schedule.last_due_at or schedule.resume_at or schedule.next_run_at
    if anchor is None or not spec.interval_seconds:
        return
    step = timedelta(seconds=spec.interval_seconds)
    first = anchor + ((low - anchor) // step + 1) * step  # the first grid time after low
    if spec.end_time is not None:
        high = min(high, spec.end_time)
    if first > high:
        return
    if (high - first) // step + 1 > MAX_DUE_TIMES:
        raise _too_large(schedule)
    due = first
    while due <= high:
        yield due
        due += step


def _too_large(schedule: ScheduleView) -> AuditTooLarge:
    return AuditTooLarge(
        f"schedule {schedule.name!r} ({schedules.describe(schedule.spec)}) has more than "
        f"{MAX_DUE_TIMES} due times in the window (the audit's bound, "
        "pg_beat.audit.MAX_DUE_TIMES): audit a shorter window (--since, --until) or this "
        "schedule alone in pieces"
    )


# --------------------------------------------------------------------------- comparison


def audit_schedule(
    schedule: ScheduleView, runs: Iterable[RunView], window: Window, gaps: Sequence[Gap]
) -> Iterator[Finding]:
    """Findings and info of one schedule; ``runs``: its run rows due in the window, oldest
    first (read lazily: both sides are merged as they come, nothing is held)."""
    bounds = checked_range(schedule, window, gaps)
    try:
        schedules.validate(schedule.spec)
    except InvalidSchedule as exc:  # edited by hand into something the scheduler parks
        bounds = None
        yield _info(schedule, "partly_checked", f"due times not checked: {exc}")
    if bounds is not None and bounds[0] > window.since:
        yield _info(
            schedule,
            "partly_checked",
            f"due times checked from {_at(bounds[0])} only (created, edited or first planned then)",
        )
    expected = iter(expected_due_times(schedule, *bounds)) if bounds else iter(())
    due = next(expected, None)
    for run in runs:
        while due is not None and due < run.due_at:
            yield _missing(schedule, due, window, gaps)
            due = next(expected, None)
        if due is not None and due == run.due_at:
            due = next(expected, None)
        elif bounds is not None and bounds[0] < run.due_at <= bounds[1]:
            yield Finding(
                "unplanned_run",
                schedule.name,
                run.due_at,
                run.task_id,
                "a run at a due time the schedule does not produce (run now, an earlier "
                "definition)",
            )
        yield from run_findings(schedule, run, window, gaps)
    while due is not None:
        yield _missing(schedule, due, window, gaps)
        due = next(expected, None)


def _missing(schedule: ScheduleView, due: datetime, window: Window, gaps: Sequence[Gap]) -> Finding:
    return Finding(
        "missing",
        schedule.name,
        due,
        task_id_for(window.group, schedule.name, due),
        "no run row for this due time",
        _leaderless(gaps, due, due),  # a leader alive at its due time claims it at once
    )


def run_findings(
    schedule: ScheduleView, run: RunView, window: Window, gaps: Sequence[Gap]
) -> Iterator[Finding]:
    """What is wrong with one run row, whatever its due time."""
    for kind, what, why in (
        *_status_findings(run, window, gaps),
        *_delivery_findings(schedule, run, window, gaps),
        *_outcome_findings(run),
        *_unfinished_findings(schedule, run, window),
    ):
        yield Finding(kind, schedule.name, run.due_at, run.task_id, what, why)


_Item = tuple[str, str, str]  # (kind, what, why)


def _status_findings(run: RunView, window: Window, gaps: Sequence[Gap]) -> Iterator[_Item]:
    """What the scheduler recorded instead of sending it."""
    # What it waited through before it was decided (claimed), or until now if never sent.
    waited = _leaderless(gaps, run.due_at, run.claimed_at)
    if run.status == "skipped" and (run.reason or "").startswith(OVERLAP_PREFIX):
        # Not sent because the previous run still ran, as its overlap policy asks: listed with
        # why, not a finding (a misfire's skip is: it follows downtime).
        yield "overlap_skipped", "not sent: the previous run was still going", run.reason or ""
    elif run.status == "skipped":
        why = run.reason or "misfire: it waited longer than the grace time (misfire policy)"
        yield "skipped", "recorded skipped, not sent", _join(why, waited)
    elif run.status == "expired":
        yield "expired", "past its expiry before it could be sent", waited
    elif run.status == "failed":
        yield "failed", f"not published: {run.error or 'no error recorded'}", ""
    elif run.status == "claimed" and run.claimed_at <= window.now - _seconds(window.settle):
        why = _leaderless(gaps, run.due_at, window.now)
        yield "unsent", f"claimed at {_at(run.claimed_at)}, never sent", why


def _delivery_findings(
    schedule: ScheduleView, run: RunView, window: Window, gaps: Sequence[Gap]
) -> Iterator[_Item]:
    """How it was sent, and whether a worker started it once."""
    if run.sent_at is not None:
        lateness = run.sent_at - run.due_at
        by_design = (run.reason or "").startswith(BY_DESIGN_PREFIX)
        if lateness > _seconds(window.grace) and not by_design:
            what = (
                f"sent {lateness.total_seconds():.1f}s after its due time (grace {window.grace:g}s)"
            )
            yield "late", what, _join(_leaderless(gaps, run.due_at, run.sent_at), run.reason or "")
        started = run.started_at is not None or run.bodies > 0 or run.outcome is not None
        settled = run.sent_at <= window.now - _seconds(window.settle)
        if schedule.tracked and not started and settled:
            what = f"sent at {_at(run.sent_at)}, no worker started it within {window.settle:g}s"
            yield "never_started", what, "its schedule's runs are tracked (executions or health)"
    if run.bodies > 1:
        yield "started_twice", f"the task body ran {run.bodies} times", ""
    if run.duplicates:
        what = f"{run.duplicates} duplicate deliveries acknowledged without running"
        yield "duplicate_delivery", what, ""


def _outcome_findings(run: RunView) -> Iterator[_Item]:
    """What the workers recorded as its final outcome."""
    if run.outcome == "failure":
        yield "failed", f"task failed: {run.outcome_error or 'no error recorded'}", ""
    elif run.outcome == "lost":
        where = f" on {run.worker}" if run.worker else ""
        why = run.outcome_error or "its worker died, or it ran past max_runtime"
        yield "lost", f"its execution{where} was lost", why
    elif run.outcome == "revoked":
        yield "revoked", "revoked before it finished", run.outcome_error or ""


def _unfinished_findings(schedule: ScheduleView, run: RunView, window: Window) -> Iterator[_Item]:
    """A run a worker started that has had no final outcome for longer than its max_runtime:
    lost, though nobody recorded it (the leader records a blocker lost only for schedules
    under skip or buffer_one). A pending retry counts as unfinished; a recent start does not."""
    if run.started_at is None or run.finished_at is not None or run.outcome in FINAL_OUTCOMES:
        return
    limit = schedule.max_runtime or window.max_runtime
    if run.started_at <= window.now - _seconds(limit):
        where = f" on {run.worker}" if run.worker else ""
        what = f"started at {_at(run.started_at)}{where}, no outcome within {limit:g}s"
        yield "lost", what, "its worker died, or it runs past max_runtime"


def _info(schedule: ScheduleView, kind: str, what: str) -> Finding:
    return Finding(kind, schedule.name, None, None, what)


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _at(moment: datetime) -> str:
    """``2026-12-01 09:00:00Z`` (milliseconds when there are any), as the CLI shows times."""
    moment = moment.astimezone(timezone.utc)
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond // 1000:03d}"
    return text + "Z"


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)
