#!/usr/bin/env bash
# Managing schedules with the pg-beat CLI: the same tour as examples/manage_schedules.py.
#
#   export PG_BEAT_DATABASE_URL=postgresql://postgres@127.0.0.1/pg_beat_example
#   bash examples/manage_schedules.sh            # KEEP=1 leaves the schedules in place
#
# Exit codes scripts can rely on: 0 ok, 1 bad input or state (unknown schedule, bad cron,
# schema not migrated), 2 usage, 3 database unreachable. Errors are one line on stderr.
# Every read command takes --json (stable keys, documented in `pg-beat <command> --help`).
set -euo pipefail

: "${PG_BEAT_DATABASE_URL:?set PG_BEAT_DATABASE_URL to a PostgreSQL URL}"
PG_BEAT=${PG_BEAT:-pg-beat}

# Echo the command line, quoting what the shell would need quoted.
show() {
    local line="\$ pg-beat" arg
    for arg in "$@"; do
        case $arg in
            *[!A-Za-z0-9_./:=@+-]*) line+=" '$arg'" ;;
            *) line+=" $arg" ;;
        esac
    done
    echo "$line"
}

run() {
    show "$@"
    "$PG_BEAT" "$@"
}

# Run a command that is meant to fail: show its one-line error and exit code.
refused() {
    local code=0
    show "$@"
    "$PG_BEAT" "$@" 2>&1 || code=$?
    if [ "$code" -eq 0 ]; then
        echo "expected pg-beat $* to fail" >&2
        return 1
    fi
    echo "(exit code $code)"
}

# Idempotent: the schema is migrated by a deploy step, never by the schedulers.
run db upgrade

# What an earlier KEEP=1 run left.
for name in example-heartbeat example-tidy-berlin example-once; do
    "$PG_BEAT" schedules remove "$name" >/dev/null 2>&1 || true
done

# Three ways to say when: an interval, a crontab in a timezone, once at a time (ISO 8601).
run schedules add example-heartbeat examples.app.heartbeat --every 30s
run schedules add example-tidy-berlin examples.app.tidy \
    --cron "*/5 8-18 * * mon-fri" --tz Europe/Berlin --misfire skip \
    --description "tidy up every five minutes in Berlin office hours"
at=$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || date -u -v+1H +%Y-%m-%dT%H:%M:%SZ)
run schedules add example-once examples.app.tidy --at "$at" --queue celery --expires 600

# The same validation and messages as the Python API; nothing is written.
refused schedules add example-bad examples.app.tidy --cron "61 * * * *"
refused schedules add example-heartbeat examples.app.heartbeat --every 10s
refused schedules show example-no-such

# Change, pause, resume, run now.
run schedules update example-heartbeat --every 10s
run schedules disable example-tidy-berlin
run schedules enable example-tidy-berlin
run schedules run-now example-heartbeat

run schedules list
run schedules show example-tidy-berlin
show schedules show example-heartbeat --json
"$PG_BEAT" schedules show example-heartbeat --json | python3 -c \
    'import json, sys; s = json.load(sys.stdin); print(s["name"], s["schedule_text"], s["enabled"])'

# Which replica and epoch sent each tick, and how late (empty until beat runs).
run runs --schedule example-heartbeat --since 10m --limit 5

if [ "${KEEP:-0}" != 1 ]; then
    for name in example-heartbeat example-tidy-berlin example-once; do
        run schedules remove "$name"
    done
fi
