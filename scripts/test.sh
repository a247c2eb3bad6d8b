#!/usr/bin/env bash
# Set up, start the local Kafka broker (unless SENDGUARD_BOOTSTRAP names one), then run
# ruff, ruff format --check, mypy and pytest. Arguments go to pytest. Every check runs
# even after one fails; the exit status is non-zero if any failed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

SENDGUARD_SETUP_BROWSER=1 SENDGUARD_SETUP_MAIL=1 bash scripts/setup.sh
export PATH="$root/.venv/bin:$PATH"

started_broker=0
stop_broker() {
    if ((started_broker)); then
        started_broker=0
        sendguard kafka down || echo "test.sh: could not stop the Kafka broker it started" >&2
    fi
}
trap stop_broker EXIT
# Turn Ctrl-C and kill into a normal exit so the EXIT trap stops the broker.
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -z "${SENDGUARD_BOOTSTRAP:-}" ]]; then
    # A broker of the same data dir that already runs (a developer's) is reused and left
    # running; only one started here is stopped afterwards.
    if ! sendguard kafka status >/dev/null; then
        started_broker=1 # set before `up`, so a half-started broker is stopped too
        sendguard kafka up
    fi
    # From status, not from SENDGUARD_KAFKA_PORT: a reused broker may run on another port.
    SENDGUARD_BOOTSTRAP="$(sendguard kafka status | awk '$1 == "bootstrap:" { print $2 }')"
    [[ -n "$SENDGUARD_BOOTSTRAP" ]] || {
        echo "test.sh: could not read the broker's address from sendguard kafka status" >&2
        exit 1
    }
    export SENDGUARD_BOOTSTRAP
fi
echo "test.sh: Kafka at $SENDGUARD_BOOTSTRAP" >&2

failed=()
run() {
    echo "test.sh: \$ $*" >&2
    "$@" || failed+=("$*")
}

run ruff check .
run ruff format --check .
run mypy
# pytest exits 5 when it collected no tests; that counts as a failure here too.
run pytest "$@"

if ((${#failed[@]})); then
    echo "test.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "test.sh: all checks passed" >&2
