"""Deciding what to do with the rows a claim found: pure, no I/O, ``now`` is an argument.

The dispatch loop reads due and unplanned rows inside its fenced transaction and hands them
here; the planner returns what to write (run rows, each schedule's next due time, parked rows)
and the claims to publish once that commits. Every row is validated as the API validates it
(definition, task, args, kwargs and options), so a row edited by hand into something invalid is
parked with its error, never published and never in the way of the others (invariant 12).

The work per transaction is bounded (invariant 11): misfire resolution costs O(1) per schedule
(O(limit) for ``catch_up``, at most ``MAX_CATCH_UP_LIMIT``), the ticks of one claim are capped
at the batch size, and rows are taken only while a time budget lasts, new rows and due rows
each their own; what is left is released at commit and taken by the next transaction, so a
long backlog, or a bulk import of expensive (solar) rows, goes through many short ones.

Lateness is downtime only (invariant 19, :mod:`pg_beat.downtime`): the planner is given the
current :class:`~pg_beat.downtime.Term`, and a tick due while this leader held the lease is
never a misfire, however long the leader's own queue kept it.

A tick asked for by hand on a disabled schedule (run now: ``run_once_at``) is one tick due at
that time, claimed whether or not the row is enabled and without moving its grid; a row that
is also due on its grid (it was enabled meanwhile) gets both, each once.

Overlap policies (``overlap_policy``, NULL: ``pg_beat_overlap_policy``) are decided here too,
from the newest unfinished run of each ``skip`` or ``buffer_one`` row (its :class:`Blocker`,
read in the same fenced transaction). A blocker blocks until it finishes, until
``max_runtime`` after it started, or at once when its worker is GONE; one that stopped blocking
unfinished is recorded lost. While one blocks, ``skip`` records each tick that would have gone
out as skipped, with the reason; ``buffer_one`` holds the first one back
(``buffered_due_at``: the grid moves on) and records the others skipped. The held tick is sent,
with its own due time and a reason, by the first claim that finds the blocker gone: late by
design, so never a misfire (its ``expires`` still applies). ``allow`` reads nothing more.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from pg_beat import downtime, schedules
from pg_beat.config import OVERLAP_POLICIES, Settings
from pg_beat.publish.ticks import Claim, task_id_for
from pg_beat.store.claims import Advance, Blocker, RunRow
from pg_beat.store.schedules import SCHEDULE_COLUMNS
from pg_beat.validation import spec_from_row, validate_values

logger = logging.getLogger("pg_beat.dispatch")

#: Seconds a claim transaction spends deciding due rows; rows beyond it wait for the next one.
PLAN_BUDGET = 0.03
#: Seconds a claim transaction spends planning new or redefined rows (a solar row costs up to
#: hundreds of searches); rows beyond it stay unplanned for the next one. Kept apart from
#: PLAN_BUDGET, so a bulk import never takes the due ticks' turn.
NEW_ROWS_BUDGET = 0.015
#: Rows known valid, by (id, updated_at): every edit through SQL or the API bumps updated_at.
_VALID_CACHE = 100_000

Row = Mapping[Any, Any]  # a SQLAlchemy RowMapping, or a dict in tests


@dataclass
class Plan:
    """What one claim transaction writes, and what it publishes after the commit."""

    runs: list[RunRow] = field(default_factory=list)
    advances: list[Advance] = field(default_factory=list)
    #: The ticks to publish, by (schedule id, due time); run ids come from the insert.
    claims: dict[tuple[int, datetime], Claim] = field(default_factory=dict)
    #: A schedule is still due after this claim, or rows were left for the next one.
    behind: bool = False
    parked: list[tuple[str, str]] = field(default_factory=list)  # (schedule, error)
    #: Unfinished runs that stopped blocking (max_runtime passed, worker gone): record lost.
    lost: list[int] = field(default_factory=list)


@dataclass
class _Gate:
    """One row's overlap state while its ticks are decided."""

    policy: str
    #: Task id of the unfinished run the next tick would overlap, None when there is none.
    blocker: str | None
    #: The tick held back (buffered_due_at) as it stands now.
    buffered: datetime | None


class Planner:
    """Turns due rows into runs and claims, with the group's settings; keeps a cache of the rows
    it has validated."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.perf_counter) -> None:
        self.settings = settings
        #: Seconds, for the budgets: only differences are used.
        self.clock = clock
        self._valid: set[tuple[int, datetime]] = set()

    # --- validation ----------------------------------------------------------------------

    def check(self, row: Row) -> str | None:
        """None when the row is a valid schedule, else the error (as the API would raise it)."""
        key = (row["id"], row["updated_at"])
        if key in self._valid:
            return None
        try:
            validate_values(row["name"], {c: row[c] for c in SCHEDULE_COLUMNS if c != "name"})
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        if len(self._valid) >= _VALID_CACHE:
            self._valid.clear()
        self._valid.add(key)
        return None

    # --- rows without a due time ---------------------------------------------------------

    def plan(
        self, rows: Sequence[Row], now: datetime, budget: float = NEW_ROWS_BUDGET
    ) -> tuple[list[tuple[int, datetime | None]], list[tuple[int, str]]]:
        """First due times of new or redefined rows, and the rows to park (id, error): those
        whose definition is invalid (they have no due time). A row whose definition is valid
        but whose task or payload is not is planned: at its due time it is recorded as a failed
        run, and parked then.

        Rows are taken in order while ``budget`` seconds last (at least one): the rows after
        are in neither list, left for the next transaction."""
        plans: list[tuple[int, datetime | None]] = []
        parked: list[tuple[int, str]] = []
        started = self.clock()
        for index, row in enumerate(rows):
            if index and self.clock() - started > budget:
                break
            try:
                spec = spec_from_row(row)
                schedules.validate(spec)
                plans.append((row["id"], schedules.first_due(spec, now, row["last_due_at"])))
            except Exception as exc:  # an invalid definition, or ephem missing for solar
                error = f"{type(exc).__name__}: {exc}"
                self._log_parked(row["name"], error)
                parked.append((row["id"], error))
        return plans, parked

    # --- due rows ------------------------------------------------------------------------

    def overlap_policy(self, row: Row) -> str:
        """The row's effective overlap policy. A value the CHECK constraint would refuse
        counts as ``allow`` here (the row itself is parked as invalid by :meth:`check`)."""
        policy = row.get("overlap_policy") or self.settings.overlap_policy
        return policy if policy in OVERLAP_POLICIES else "allow"

    def gated(self, row: Row) -> bool:
        """Whether deciding this row needs its :class:`Blocker` (skip or buffer_one)."""
        return self.overlap_policy(row) != "allow"

    def claim(
        self,
        rows: Sequence[Row],
        now: datetime,
        epoch: int,
        max_ticks: int,
        term: downtime.Term | None = None,
        blockers: Mapping[int, Blocker] | None = None,
    ) -> Plan:
        """Decide the due rows in order, within the time budget, until ``max_ticks`` are
        recorded (a row of ``catch_up`` may record several). ``term``: the current term, whose
        start bounds what counts as late (None: as if it began at ``now``, nothing watched
        before it). ``blockers``: the unfinished newest run of each :meth:`gated` row that has
        one, by schedule id."""
        plan = Plan()
        term = term or downtime.Term(now)
        blockers = blockers or {}
        started = self.clock()
        for index, row in enumerate(rows):
            if index and (len(plan.runs) >= max_ticks or self.clock() - started > PLAN_BUDGET):
                plan.behind = True  # the rest is released at commit and claimed next time
                break
            self._claim_row(plan, row, now, epoch, term, blockers.get(row["id"]))
        return plan

    def _claim_row(
        self,
        plan: Plan,
        row: Row,
        now: datetime,
        epoch: int,
        term: downtime.Term,
        blocker: Blocker | None = None,
    ) -> None:
        once = _run_once(row, now)
        on_grid = bool(row["enabled"]) and _due_by(row["next_run_at"], now)
        buffered: datetime | None = row.get("buffered_due_at") if row["enabled"] else None
        due = row["next_run_at"] if on_grid else once
        if due is None and buffered is None:
            return  # neither due on its grid nor asked for nor held back: not a due row
        error = self.check(row)
        decision = None
        if error is None:
            try:
                grid = ((), None, None)
                decision = self._decide(row, row["next_run_at"], now, term) if on_grid else grid
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
        if decision is None:
            # Recorded as a failed run, and parked until someone edits the row.
            assert error is not None
            failed = due if due is not None else buffered
            assert failed is not None
            self._log_parked(row["name"], error)
            plan.parked.append((row["name"], error))
            plan.runs.append(
                RunRow(row["id"], row["name"], failed, self._task_id(row, failed), "failed", error)
            )
            plan.advances.append(
                Advance(
                    row["id"],
                    None,
                    None,
                    error,
                    once=once is not None,
                    buffer=due is None,  # the held tick was the one failed
                )
            )
            return
        ticks, next_due, last_due = decision
        if once is not None and all(once != due_at for due_at, _ in ticks):
            # The tick asked for by hand: sent whatever the misfire policy (it was asked for
            # now), past its expiry recorded expired; the grid's own ticks are decided above.
            ticks = tuple(sorted(((once, True), *ticks)))
        gate = self._gate(plan, row, blocker, buffered, now)
        if gate.buffered is not None and gate.blocker is None:
            # The tick held back while the previous run went on: it goes out now, at once
            # (late by design: no misfire policy, not the late lane), unless it expired.
            self._record(plan, row, gate, gate.buffered, True, now, epoch, held=True)
            gate.buffered = None
        for due_at, send in ticks:
            self._record(plan, row, gate, due_at, send, now, epoch)
        plan.advances.append(
            Advance(
                row["id"],
                next_due,
                last_due,
                grid=on_grid,
                once=once is not None,
                buffer=gate.buffered != buffered,
                buffered_due_at=gate.buffered,
            )
        )
        if on_grid and next_due is not None and next_due <= now:
            plan.behind = True

    def _decide(
        self, row: Row, due: datetime, now: datetime, term: downtime.Term
    ) -> tuple[tuple[tuple[datetime, bool], ...], datetime | None, datetime | None]:
        """(ticks, next due time, last due time to record; None keeps the old one)."""
        resume: datetime | None = row.get("resume_at")
        if resume is not None and due < resume:
            # Made due by hand (run now): one tick, then the grid resumes where it was, and
            # the last due time on the grid stays what it was.
            return ((due, True),), resume, None
        settings = self.settings
        misfire = schedules.resolve_misfire(
            spec_from_row(row),
            due,
            now,
            row["misfire_policy"] or settings.misfire_policy,
            settings.misfire_grace_time,
            row["catch_up_limit"] or settings.catch_up_limit,
            term,
        )
        return misfire.ticks, misfire.next_due, misfire.ticks[-1][0]

    def _gate(
        self,
        plan: Plan,
        row: Row,
        blocker: Blocker | None,
        buffered: datetime | None,
        now: datetime,
    ) -> _Gate:
        """The row's overlap state before its ticks: the blocker, if it still blocks (one that
        stopped blocking unfinished is recorded lost), and the tick held back."""
        policy = self.overlap_policy(row)
        if policy == "allow" or blocker is None:
            return _Gate(policy, None, buffered)
        max_runtime = row.get("max_runtime") or self.settings.max_runtime
        overdue = blocker.since + timedelta(seconds=max_runtime) <= now
        if not (overdue or blocker.worker_gone):
            return _Gate(policy, blocker.task_id, buffered)
        why = "its worker is gone" if blocker.worker_gone else f"over max_runtime {max_runtime:g}s"
        logger.warning(
            "dispatch: schedule %r: run %s no longer blocks the next tick (%s): recorded lost",
            row["name"],
            blocker.task_id,
            why,
            extra={"action": "run_lost", "schedule": row["name"], "task_id": blocker.task_id},
        )
        plan.lost.append(blocker.run_id)
        return _Gate(policy, None, buffered)

    def _record(
        self,
        plan: Plan,
        row: Row,
        gate: _Gate,
        due_at: datetime,
        send: bool,
        now: datetime,
        epoch: int,
        held: bool = False,
    ) -> None:
        """Record one tick, through the overlap policy (``held``: the tick buffer_one held
        back, sent now that its blocker is gone)."""
        status = self._status(row, due_at, send, now)
        task_id = self._task_id(row, due_at)
        reason = "buffered: sent when the previous run finished" if held else None
        if status == "claimed" and gate.blocker is not None:
            if gate.policy == "buffer_one" and gate.buffered is None:
                gate.buffered = due_at  # held back: no run row until it goes out
                return
            status = "skipped"
            reason = (
                "overlap: a tick is already buffered"
                if gate.policy == "buffer_one"
                else f"overlap: previous run {gate.blocker} still running"
            )
        plan.runs.append(RunRow(row["id"], row["name"], due_at, task_id, status, reason=reason))
        if status == "claimed":
            claim = self._claim(row, due_at, task_id, now, epoch)
            plan.claims[(row["id"], due_at)] = replace(claim, late=False) if held else claim
            if gate.policy != "allow":
                gate.blocker = task_id  # the next tick of this claim would overlap it

    def _status(self, row: Row, due_at: datetime, send: bool, now: datetime) -> str:
        if not send:
            return "skipped"
        expires_at = expiry(row["options"], due_at)
        return "expired" if expires_at is not None and expires_at <= now else "claimed"

    def _task_id(self, row: Row, due_at: datetime) -> str:
        return task_id_for(self.settings.group, row["name"], due_at)

    def _claim(self, row: Row, due_at: datetime, task_id: str, now: datetime, epoch: int) -> Claim:
        return Claim(
            run_id=0,
            schedule_id=row["id"],
            schedule=row["name"],
            task=row["task"],
            args=row["args"],
            kwargs=row["kwargs"],
            options=row["options"],
            due_at=due_at,
            task_id=task_id,
            epoch=epoch,
            late=(now - due_at).total_seconds() > self.settings.misfire_grace_time,
            expires_at=expiry(row["options"], due_at),
            run_once=self._runs_once(row),
            overlap=self.overlap_policy(row),
        )

    def _runs_once(self, row: Row) -> bool:
        """The row's ``run_once``, or the setting where it has none."""
        value = row.get("run_once")
        return self.settings.run_once if value is None else bool(value)

    # --- orphans -------------------------------------------------------------------------

    def orphans(
        self, rows: Sequence[Row], now: datetime, term: downtime.Term | None = None
    ) -> tuple[list[Claim], list[tuple[int, str]]]:
        """Claims of a dead epoch never marked sent, through each schedule's misfire policy and
        expiry: the ones to re-publish (same task ids), and (run id, status) for the others.

        Past its ``expires`` a tick is recorded expired. Otherwise it goes out under every
        policy unless it is late: more than the grace time of downtime in its wait, measured
        as for due rows by ``term`` (None: as if it began at ``now``), so a failover shorter
        than the grace loses nothing, nor does waiting for the dead epoch's lease to expire.
        Late: ``skip`` skips them all, ``fire_once`` sends the oldest of a schedule and skips
        the rest, ``catch_up`` sends the oldest up to its limit.
        """
        send: list[Claim] = []
        statuses: list[tuple[int, str]] = []
        late_sent: dict[int, int] = {}
        cut = downtime.late_before(term or downtime.Term(now), self.settings.misfire_grace_time)
        for row in rows:
            due: datetime = row["due_at"]
            expires_at = expiry(row["options"], due)
            if expires_at is not None and expires_at <= now:
                statuses.append((row["id"], "expired"))
                continue
            late = cut is not None and due < cut
            if late and not self._late_allowed(row, late_sent.get(row["schedule_id"], 0)):
                statuses.append((row["id"], "skipped"))
                continue
            if late:
                late_sent[row["schedule_id"]] = late_sent.get(row["schedule_id"], 0) + 1
            send.append(
                Claim(
                    run_id=row["id"],
                    schedule_id=row["schedule_id"],
                    schedule=row["schedule_name"],
                    task=row["task"],
                    args=row["args"],
                    kwargs=row["kwargs"],
                    options=row["options"],
                    due_at=due,
                    task_id=row["task_id"],
                    epoch=row["epoch"],
                    late=True,
                    expires_at=expires_at,
                    run_once=self._runs_once(row),
                    overlap=self.overlap_policy(row),
                )
            )
        return send, statuses

    def _late_allowed(self, row: Row, sent: int) -> bool:
        policy = row["misfire_policy"] or self.settings.misfire_policy
        if policy == "skip":
            return False
        if policy == "fire_once":
            return sent == 0
        return sent < (row["catch_up_limit"] or self.settings.catch_up_limit)

    # --- logging -------------------------------------------------------------------------

    def _log_parked(self, name: str, error: str) -> None:
        logger.error(
            "dispatch: schedule %r skipped until it is edited: %s",
            name,
            error,
            extra={"action": "parked", "schedule": name},
        )


def _run_once(row: Row, now: datetime) -> datetime | None:
    """The tick asked for by hand (``run_once_at``: run now of a disabled schedule) if it is due
    by ``now``, else None. One tick at that time, enabled or not; the grid stays as it was."""
    once: datetime | None = row.get("run_once_at")
    return once if _due_by(once, now) else None


def _due_by(moment: datetime | None, now: datetime) -> bool:
    return moment is not None and moment <= now


def expiry(options: Mapping[str, Any] | None, due_at: datetime) -> datetime | None:
    """The absolute expiry of a tick: its due time plus the ``expires`` (or ``expire_seconds``)
    option in seconds; None without one. A tick due at 12:00 with ``expires=60`` expires at
    12:01 however late it goes out."""
    if not options:
        return None
    seconds = options.get("expires", options.get("expire_seconds"))
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return None
    return due_at + timedelta(seconds=seconds)
