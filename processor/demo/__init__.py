"""`sendguard demo`: sendguard working, live in the terminal, in well under two minutes.

Starts what is missing and stops what it started:

    local Kafka broker ─ only if none answers (stopped at the end only then)
    topics             ─ topics.yaml under a fresh prefix `demo<run>.` (deleted at the end)
    worker             ─ `sendguard worker` subprocess: demo policy (`demo.scenario`),
                         memory store, fresh app id, admin and support tokens made up here
    scenario           ─ played in real time through `sendguard produce`'s producer
    watcher            ─ a consumer thread on the four output topics, printing each record

Releases go through the worker's support API, as a helpdesk would make them. At the
end it prints a summary table built from what the output topics said, plus a few
numbers scraped from the worker's /metrics.

Modules: `scenario` (the built-in scenario, pure data), `show` (what the terminal
shows: the watcher, lines, the summary), `parts` (the processes and endpoints it
starts and talks to), `run` (the orchestration and the `demo` command).
"""
