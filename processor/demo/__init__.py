"""`sendguard demo`: sendguard working, live in the terminal, in well under two minutes.

Two demos (`choice` picks one: the mail loop where rspamd and Postfix are installed and
it runs as root, else the classic scenario, after a line saying why):

The classic scenario starts what is missing and stops what it started:

    local Kafka broker ─ only if none answers (stopped at the end only then)
    topics             ─ topics.yaml under a fresh prefix `demo<run>.` (deleted at the end)
    worker             ─ `sendguard worker` subprocess: demo policy (`demo.scenario`),
                         memory store, fresh app id, admin and support tokens made up here
    scenario           ─ played in real time through `sendguard produce`'s producer
    watcher            ─ a consumer thread on the four output topics, printing each record

Releases go through the worker's support API, as a helpdesk would make them. At the
end it prints a summary table built from what the output topics said, plus a few
numbers scraped from the worker's /metrics.

The mail loop (`mail_run`) starts the broker, topics and a worker the same way, plus
`processor.local.mail_loop.MailServices` (sendguard ingest, rspamd, sendguard gateway,
Postfix), sends real SMTP mail and shows each message's way through all of them.

Modules: `choice` (which demo), `scenario` (the classic scenario, pure data), `show`
(what the terminal shows: the watcher, lines, the summary), `parts` (the processes
and endpoints it starts and talks to), `run` (the orchestration and the `demo`
command); `mail_story` (the mail loop's cast and policy, pure data), `mail_show` (its
lines and summary), `mail_run` (its orchestration).
"""
