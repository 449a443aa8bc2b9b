"""Shared by the fake SLURM commands: where they record what they were asked to do."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path


def log_dir() -> Path:
    """$FAKE_SLURM_LOG, else fake_log/ beside the directory of the fakes: a job submitted
    with --export=NONE does not see the test's variables."""
    return Path(os.environ.get("FAKE_SLURM_LOG") or Path(__file__).resolve().parent.parent / "fake_log")


def record(name: str, entry: dict) -> None:
    """Append one JSON line to log_dir()/<name>.jsonl."""
    log_dir_path = log_dir()
    log_dir_path.mkdir(parents=True, exist_ok=True)
    with open(log_dir_path / f"{name}.jsonl", "a", encoding="utf-8") as f:
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


def export_environment(mode: str, environ: dict, fakes_dir: str) -> dict:
    """The environment SLURM gives a job or a step for --export=MODE (sbatch, srun):
    ALL (the default): all of `environ`; NONE: only its SLURM_* variables and a login
    environment (HOME, USER and a PATH of the fakes' directory, standing in for where
    SLURM is installed, and /usr/bin:/bin); ALL,VAR=x / VAR,...: ALL or NONE plus those."""
    parts = mode.split(",")
    if parts[0] == "ALL":
        env, named = dict(environ), parts[1:]
    else:
        env = {k: v for k, v in environ.items() if k.startswith("SLURM_")}
        env.update(PATH=f"{fakes_dir}:/usr/bin:/bin", HOME=environ.get("HOME", "/"),
                   USER=environ.get("USER", "user"))
        named = [] if parts[0] == "NONE" else parts
    for item in named:
        key, eq, value = item.partition("=")
        if eq:
            env[key] = value
        elif key in environ:
            env[key] = environ[key]
    return env


def memory_mb(size: str) -> int:
    """SLURM's memory sizes: 4G -> 4096, 4000M or 4000 -> 4000."""
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    if size[-1:].upper() in units:
        return int(float(size[:-1]) * units[size[-1].upper()])
    return int(size)
