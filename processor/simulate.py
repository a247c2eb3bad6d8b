"""`sendguard simulate`: the live policy over a scenario file, with no Kafka.

Operators replay past verdicts through a policy before adopting it; `--compare`
shows what a policy change would change, mailbox by mailbox.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import click

from processor.policy import (
    Block,
    Decision,
    Engine,
    MailboxKey,
    PolicyConfig,
    PolicyConfigError,
    ReleaseRefused,
)
from processor.policy_file import load_policy
from processor.scenario import ScenarioError, decision_line, format_timestamp, parse_line


@dataclass
class Simulation:
    """What one run over a scenario produced."""

    engine: Engine
    decisions: list[Decision] = field(default_factory=list)
    #: (line number, reason) for every line that could not be used.
    rejected: list[tuple[int, str]] = field(default_factory=list)
    #: Refused releases (the live worker reports each as `release_refused`).
    refused: list[ReleaseRefused] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class LineResult:
    """What one scenario line did: its decisions, or why it was rejected."""

    number: int
    decisions: list[Decision]
    #: Why the line was not used (it was skipped), or None.
    rejected: str | None = None
    refused: ReleaseRefused | None = None


def replay(lines: Iterable[str | bytes], engine: Engine) -> Iterator[LineResult]:
    """Feed scenario lines, in order, through `engine` (docs/policy.md, "sendguard
    simulate"), yielding each non-blank line's result as soon as it is decided.

    Never raises for what a line holds: a line that cannot be used is a rejected
    result, and the next line is read as usual.
    """
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue  # blank lines carry nothing; not an error
        try:
            event = parse_line(text)
        except ScenarioError as error:
            yield LineResult(number, [], str(error))
            continue
        try:
            decisions, refused = engine.apply(event)
        except Exception as error:  # a bug: say so, and keep the other lines' decisions
            reason = f"internal error, please report it: {type(error).__name__}: {error}"
            yield LineResult(number, [], reason[:500])
            continue
        if refused is not None:
            yield LineResult(number, decisions, f"release refused: {refused.reason}", refused)
        else:
            yield LineResult(number, decisions)


def run(lines: Iterable[str | bytes], config: PolicyConfig) -> Simulation:
    """Every line through one engine: the decisions and the rejected lines, collected."""
    simulation = Simulation(Engine(config))
    for result in replay(lines, simulation.engine):
        simulation.decisions.extend(result.decisions)
        if result.rejected is not None:
            simulation.rejected.append((result.number, result.rejected))
        if result.refused is not None:
            simulation.refused.append(result.refused)
    return simulation


def _policy(path: str | None) -> PolicyConfig:
    try:
        return load_policy(path)
    except PolicyConfigError as error:
        raise click.BadParameter(str(error), param_hint="--config") from None


@click.command()
@click.argument("scenario", type=click.File("rb"))
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="SENDGUARD_POLICY",
    show_envvar=True,
    help="Policy file (YAML); the defaults of docs/policy.md when omitted.",
)
@click.option(
    "--compare",
    "compare_path",
    type=click.Path(dir_okay=False),
    help="A second policy file: print, per mailbox, where its outcome differs.",
)
@click.option("--explain", is_flag=True, help="Print each block's evidence beside it.")
def simulate(
    scenario: BinaryIO, config_path: str | None, compare_path: str | None, explain: bool
) -> None:
    """Replay SCENARIO (JSON lines, `-` for stdin) and print what the worker would emit.

    Decisions are printed as each line is decided. Rejected lines go to stderr as
    `line N: reason` and are skipped; the exit status is 1 when any line was rejected.
    """
    config = _policy(config_path)
    other = None if compare_path is None else _policy(compare_path)
    out = click.get_binary_stream("stdout")
    rejected = False
    try:
        if other is None:
            for result in replay(scenario, Engine(config)):
                for decision in result.decisions:
                    line = json.dumps(decision_line(decision, explain), ensure_ascii=False)
                    out.write(line.encode("utf-8") + b"\n")
                if result.rejected is not None:
                    out.flush()  # this line's report after the earlier lines' decisions
                    click.echo(f"line {result.number}: {result.rejected}", err=True)
                    rejected = True
                elif result.decisions:
                    out.flush()
        else:
            lines = scenario.readlines()
            result_a, result_b = run(lines, config), run(lines, other)
            for text in compare(result_a.decisions, result_b.decisions, config_path, compare_path):
                out.write(text.encode("utf-8") + b"\n")
            out.flush()
            for number, reason in result_a.rejected:
                click.echo(f"line {number}: {reason}", err=True)
            rejected = bool(result_a.rejected)
    except BrokenPipeError:  # `simulate … | head`: the reader has all it wants
        # Python would try to flush stdout again at exit and complain; point it nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    if rejected:
        sys.exit(1)


BlockSummary = tuple[int, bool, int, int | None]  # offense, permanent, at, until


def compare(
    left: list[Decision], right: list[Decision], left_name: str | None, right_name: str | None
) -> list[str]:
    """Human-readable, per mailbox: blocks only one policy issues, and blocks that differ."""
    a_name, b_name = left_name or "defaults", right_name or "defaults"
    a, b = _blocks_by_mailbox(left), _blocks_by_mailbox(right)
    lines = [f"A = {a_name}", f"B = {b_name}"]
    differing = 0
    for key in sorted(a.keys() | b.keys(), key=lambda k: (k.tenant_id, k.mailbox)):
        a_blocks, b_blocks = a.get(key, []), b.get(key, [])
        if a_blocks == b_blocks:
            continue
        differing += 1
        lines.append(f"{key.tenant_id} {key.mailbox}: A {_count(a_blocks)}, B {_count(b_blocks)}")
        for index in range(max(len(a_blocks), len(b_blocks))):
            one = a_blocks[index] if index < len(a_blocks) else None
            two = b_blocks[index] if index < len(b_blocks) else None
            if one == two:
                continue
            if two is None:
                lines.append(f"  only A: {_describe(one)}")
            elif one is None:
                lines.append(f"  only B: {_describe(two)}")
            else:
                lines.append(f"  A: {_describe(one)}")
                lines.append(f"  B: {_describe(two)}")
    a_total = sum(len(v) for v in a.values())
    b_total = sum(len(v) for v in b.values())
    lines.append(
        f"{differing} mailbox(es) differ; A issues {a_total} block(s) "
        f"({_permanent(a)} permanent), B issues {b_total} ({_permanent(b)} permanent)"
    )
    return lines


def _blocks_by_mailbox(decisions: list[Decision]) -> dict[MailboxKey, list[BlockSummary]]:
    blocks: dict[MailboxKey, list[BlockSummary]] = {}
    for d in decisions:
        if isinstance(d, Block):
            blocks.setdefault(d.key, []).append((d.offense, d.permanent, d.at_ms, d.until_ms))
    return blocks


def _count(blocks: list[BlockSummary]) -> str:
    if not blocks:
        return "no blocks"
    top = max(offense for offense, *_ in blocks)
    return f"{len(blocks)} block(s), highest offense {top}"


def _describe(block: BlockSummary | None) -> str:
    assert block is not None
    offense, permanent, at, until = block
    end = "permanent" if permanent or until is None else f"until {format_timestamp(until)}"
    return f"offense {offense} at {format_timestamp(at)}, {end}"


def _permanent(blocks: dict[MailboxKey, list[BlockSummary]]) -> int:
    return sum(1 for summaries in blocks.values() for s in summaries if s[1])
