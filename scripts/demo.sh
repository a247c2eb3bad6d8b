#!/usr/bin/env bash
# The README's first command: set up (venv, Java and Maven for the local broker), then
# run `sendguard demo` on the local Kafka broker, well under a minute: the mail loop
# through a private Postfix and rspamd where those are installed (as root), else the
# classic scenario after a one-line note. It never installs them itself.
# Arguments go to `sendguard demo` (see `sendguard demo --help`; --mail / --no-mail).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
exec "$root/.venv/bin/sendguard" demo "$@"
