"""Shared by the fake SLURM commands: where they record what they were asked to do."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path


def record(name: str, entry: dict) -> None:
    """Append one JSON line to $FAKE_SLURM_LOG/<name>.jsonl."""
    log_dir = Path(os.environ["FAKE_SLURM_LOG"])
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{name}.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def expand_hostlist(hostlist: str) -> list[str]:
    """SLURM's compressed host lists: "node[01-03,07],gpu5" -> node01 node02 node03 node07 gpu5."""
    hosts = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)", hostlist):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(","):
            first, _, last = part.partition("-")
            for number in range(int(first), int(last or first) + 1):
                hosts.append(f"{prefix}{number:0{len(first)}d}")
    return hosts


def parse_options(argv: list[str], with_value: set[str]) -> tuple[dict, list[str]]:
    """--opt value / --opt=value / --flag up to the first non-option: (options, rest)."""
    options, i = {}, 0
    while i < len(argv) and argv[i].startswith("-"):
        key, eq, value = argv[i].partition("=")
        if not eq and key in with_value:
            i += 1
            value = argv[i]
        options[key] = value if (eq or key in with_value) else True
        i += 1
    return options, argv[i:]
