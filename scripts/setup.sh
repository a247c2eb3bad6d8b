#!/usr/bin/env bash
# Create .venv (Python 3.11) and install sendguard with its test tools into it.
# Idempotent and quiet: a second run with an unchanged pyproject.toml does nothing.
# Works from any directory; every failure stops the script with a message.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

die() {
    echo "setup.sh: $*" >&2
    exit 1
}

python="${SENDGUARD_PYTHON:-python3.11}"
venv="$root/.venv"

if [[ ! -x "$venv/bin/python" ]]; then
    command -v "$python" >/dev/null 2>&1 ||
        die "$python not found; install Python 3.11 (e.g. apt-get install python3.11 python3.11-venv) or set SENDGUARD_PYTHON"
    echo "setup.sh: creating $venv with $python" >&2
    "$python" -m venv "$venv" || die "could not create $venv with $python"
fi

version="$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[[ "$version" == "3.11" ]] ||
    die "$venv has Python $version, sendguard needs 3.11: remove $venv and run again"

# Re-install only when the dependencies changed: the stamp holds pyproject.toml's hash.
stamp="$venv/.sendguard-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
    echo "setup.sh: installing sendguard and its test dependencies into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]' ||
        die "pip install -e '.[test]' failed"
    echo "$want" >"$stamp"
fi

# The local Kafka broker needs Java 17+ and, on first use, Maven to fetch its jars.
# In CI (root, a fresh machine) install what is missing; elsewhere say what to install.
missing=()
command -v java >/dev/null 2>&1 || [[ -x "${JAVA_HOME:-/nonexistent}/bin/java" ]] ||
    missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
if ((${#missing[@]})); then
    if [[ "${CI:-}" == "true" && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "setup.sh: installing ${missing[*]} with apt-get" >&2
        apt-get update -qq || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
            die "apt-get install ${missing[*]} failed"
    else
        echo "setup.sh: warning: the local Kafka broker needs ${missing[*]} (apt-get install ${missing[*]})" >&2
    fi
fi

# The status page's test renders it in a real headless browser (Debian's chromium).
# test.sh asks for it (SENDGUARD_SETUP_BROWSER=1); the demo does not need it. As root
# with apt-get, install it when missing; otherwise that one test is skipped and says why.
if [[ "${SENDGUARD_SETUP_BROWSER:-0}" == 1 ]] && ! command -v chromium >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "setup.sh: installing chromium with apt-get (for the status page's browser test)" >&2
        apt-get update -qq || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null ||
            die "apt-get install chromium failed"
    else
        echo "setup.sh: note: without chromium the status page's browser test is skipped (apt-get install chromium)" >&2
    fi
fi

# The mail-loop test runs Debian's rspamd and Postfix as private instances on loopback
# (tests/integration/mail_support.py). test.sh asks for them (SENDGUARD_SETUP_MAIL=1).
# Postfix is preseeded "No configuration", so the package sets up no system mail server
# (the test never reads /etc/postfix); recommends (redis, ...) are not installed.
if [[ "${SENDGUARD_SETUP_MAIL:-0}" == 1 ]]; then
    mail_missing=()
    command -v rspamd >/dev/null 2>&1 || mail_missing+=(rspamd)
    [[ -x /usr/sbin/postfix ]] || command -v postfix >/dev/null 2>&1 || mail_missing+=(postfix)
    if ((${#mail_missing[@]})); then
        if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
            echo "setup.sh: installing ${mail_missing[*]} with apt-get (for the mail-loop test)" >&2
            if command -v debconf-set-selections >/dev/null 2>&1; then
                echo "postfix postfix/main_mailer_type select No configuration" |
                    debconf-set-selections || die "debconf-set-selections failed"
            fi
            apt-get update -qq || die "apt-get update failed"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                "${mail_missing[@]}" >/dev/null || die "apt-get install ${mail_missing[*]} failed"
        else
            echo "setup.sh: note: without ${mail_missing[*]} the mail-loop test is skipped (apt-get install ${mail_missing[*]})" >&2
        fi
    fi
fi
