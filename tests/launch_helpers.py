"""What the tests that start real launchers share: a free port, an environment without
the distributed variables, the check that a launch finished its work, and a look at the
processes a launch started."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import psutil

# Set by init_distributed() in in-process tests (and by a launcher around pytest): a
# launched job must start without them, or its ranks join the wrong world.
DISTRIBUTED_VARIABLES = frozenset({"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE",
                                   "MASTER_ADDR", "MASTER_PORT"})


_PORTS_GIVEN: set[int] = set()  # for remove_shm_buffers at the end of the session


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _PORTS_GIVEN.add(port)
    return port


def remove_shm_buffers() -> None:
    """DeepSpeed's /dev/shm allreduce files of the one-host launches this session started
    on ports from free_port(), left by ranks a test killed before the trainer's init
    released them (bing_bert_pld/shm_comm.py); other runs' files are not touched."""
    from bing_bert_pld import shm_comm

    for port in _PORTS_GIVEN:
        shm_comm.remove_run_buffers("127.0.0.1", str(port))


def clean_env(drop=(), **extra: str) -> dict[str, str]:
    """os.environ without the distributed variables (and `drop`), plus `extra`."""
    unwanted = DISTRIBUTED_VARIABLES | set(drop)
    return {**{k: v for k, v in os.environ.items() if k not in unwanted}, **extra}


def assert_completed(returncode: int, log: str, marker: str) -> None:
    """`marker` was logged, and the launch exited 0, or 250 with the DeepSpeed launcher's
    known exit-time crash ("terminate called without an active exception") after the work."""
    tail = log[-4000:]
    assert marker in log, tail
    if returncode == 250:
        assert "terminate called without an active exception" in log, tail
    else:
        assert returncode == 0, tail


def catches(pid: int, signum: int) -> bool:
    """Process `pid` has a handler for `signum` (/proc/PID/status SigCgt): a signal sent
    now is handled, not fatal."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) >> (signum - 1) & 1)


def trainer_ranks(launch_pid: int) -> list[int]:
    """The pids of the bing_bert_pld.train processes under a launch script."""
    try:
        children = psutil.Process(launch_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            command = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        # `python -u -m bing_bert_pld.train`; the deepspeed runner and launch.py above it
        # name the module too, after --module.
        if any(a == "-m" and b == "bing_bert_pld.train" for a, b in zip(command, command[1:])):
            found.append(child.pid)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL a launch script and everything under it (the launcher runs in a session of
    its own, out of reach of a signal to the script's process group)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
