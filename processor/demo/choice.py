"""Which demo `sendguard demo` plays: the mail loop or the classic scenario.

The mail loop is the default where it can run (rspamd and Postfix installed, and root,
which a private Postfix needs): it shows sendguard doing its job with a real mail
server, and a machine has those packages only if someone installed them for it
(`SENDGUARD_SETUP_MAIL=1 scripts/setup.sh`, which `scripts/test.sh` runs). Elsewhere,
a fresh machine included, it is the classic scenario on Kafka, after one line saying
why and how to get the mail loop. `--no-mail` asks for the classic one anyway (it
shows what the mail loop does not: escalation to a permanent block, a support
release, device scans); `--mail` where the loop cannot run falls back the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

INSTALL_HINT = "as root: SENDGUARD_SETUP_MAIL=1 bash scripts/setup.sh"


@dataclass(frozen=True)
class DemoChoice:
    mail: bool
    #: One line to print before the demo (why it is not the mail loop), or None.
    note: str | None = None


def choose_demo(requested: bool | None, missing: list[str], is_root: bool) -> DemoChoice:
    """`requested`: --mail (True), --no-mail (False) or neither (None); `missing`: the
    mail packages not installed (`mailstack.mail_packages_missing`)."""
    if requested is False:
        return DemoChoice(mail=False)
    if missing:
        names = " and ".join(missing)
        verb, them = ("is", "it") if len(missing) == 1 else ("are", "them")
        return DemoChoice(
            mail=False,
            note=f"note: {names} {verb} not installed, so this is the classic demo; for the "
            f"live mail loop through Postfix and rspamd install {them} ({INSTALL_HINT}) and "
            "run it again",
        )
    if not is_root:
        return DemoChoice(
            mail=False,
            note="note: the mail-loop demo runs a private Postfix, which needs root, so this "
            "is the classic demo; run it as root for the mail loop",
        )
    return DemoChoice(mail=True)
