"""The compatibility decision (invariant 18): may code whose revisions are CHAIN run against a
database at a revision, given what that revision declares? Each case, and the advice."""

from __future__ import annotations

import pytest

from pg_beat.compat import SchemaState, Verdict, judge

CHAIN = (
    "0001_initial",
    "0002_failures_owners_release",
    "0003_schema_compat_broker_health",
    "0004_run_outcomes_overlap",
)
HEAD = CHAIN[-1]


@pytest.mark.parametrize(
    ("database", "oldest_code", "verdict"),
    [
        # At this code's head: nothing is read, nothing to say.
        (HEAD, None, Verdict.AT_HEAD),
        # An earlier revision of this code's chain, or none: the database is behind.
        (None, None, Verdict.BEHIND),
        ("0001_initial", None, Verdict.BEHIND),
        ("0002_failures_owners_release", None, Verdict.BEHIND),
        # A known revision is judged by the chain, whatever a record says about it.
        ("0002_failures_owners_release", "0001_initial", Verdict.BEHIND),
        # A later revision that declares this head, or an earlier revision of this chain.
        ("0004_future", HEAD, Verdict.AHEAD),
        ("0004_future", "0002_failures_owners_release", Verdict.AHEAD),
        ("0009_far_future", "0001_initial", Verdict.AHEAD),
        # A later revision that needs later code, or declares nothing, or a revision of
        # another lineage.
        ("0005_future", "0004_future", Verdict.INCOMPATIBLE),
        ("0004_future", "0004_future", Verdict.INCOMPATIBLE),
        ("0004_future", None, Verdict.INCOMPATIBLE),
        ("0004_future", "abc123_elsewhere", Verdict.INCOMPATIBLE),
    ],
)
def test_verdicts(database: str | None, oldest_code: str | None, verdict: Verdict) -> None:
    state = judge(database, CHAIN, oldest_code)
    assert state.verdict is verdict
    assert state.code == HEAD and state.database == database
    assert state.runs is (verdict in (Verdict.AT_HEAD, Verdict.AHEAD))
    assert (state.problem() is None) is state.runs


def test_behind_says_upgrade_the_database() -> None:
    assert judge("0001_initial", CHAIN, None).problem() == (
        "database schema is at revision 0001_initial, behind this pg_beat, which needs "
        f"{HEAD}: run 'pg-beat db upgrade'"
    )
    assert judge(None, CHAIN, None).problem() == (
        "database schema is at revision none (not migrated), behind this pg_beat, which needs "
        f"{HEAD}: run 'pg-beat db upgrade'"
    )


def test_ahead_and_incompatible_says_upgrade_pg_beat_or_roll_back() -> None:
    assert judge("0005_future", CHAIN, "0004_future").problem() == (
        "database schema is at 0005_future, which needs pg_beat code at revision 0004_future or "
        f"later; this pg_beat is at {HEAD}: upgrade pg_beat (or roll back with 'pg-beat db "
        f"downgrade {HEAD}' run by the pg_beat that migrated it)"
    )


def test_ahead_with_no_record_says_so() -> None:
    problem = judge("0004_future", CHAIN, None).problem()
    assert problem is not None
    assert problem.startswith("database schema is at 0004_future, which this pg_beat does not")
    assert "declares no oldest compatible code revision" in problem
    assert problem.endswith(
        f"roll back with 'pg-beat db downgrade {HEAD}' run by the pg_beat that migrated it)"
    )


def test_descriptions_for_the_banner() -> None:
    assert judge(HEAD, CHAIN, None).describe() == f"at {HEAD} (ok)"
    assert judge("0004_future", CHAIN, HEAD).describe() == (
        f"at 0004_future, ahead of this pg_beat ({HEAD}), which it declares compatible "
        f"(code from {HEAD} on) (ok)"
    )
    behind = judge("0001_initial", CHAIN, None)
    assert behind.describe() == f"MISMATCH: {behind.problem()}"


def test_a_code_without_revisions_is_a_bug() -> None:
    with pytest.raises(ValueError, match="no revisions"):
        judge(None, (), None)


def test_the_state_is_a_value() -> None:
    assert judge(HEAD, CHAIN, None) == SchemaState(Verdict.AT_HEAD, HEAD, HEAD)
