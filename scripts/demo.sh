#!/usr/bin/env bash
# The README's first command: set up (venv, Java and Maven for the local broker), then
# run `sendguard demo` — a live scenario on the local Kafka broker, about a minute.
# Arguments go to `sendguard demo` (see `sendguard demo --help`).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
exec "$root/.venv/bin/sendguard" demo "$@"
