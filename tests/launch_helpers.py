"""What the tests that start real launchers share: a free port, an environment without
the distributed variables, and the check that a launch finished its work."""

from __future__ import annotations

import os
import socket

# Set by init_distributed() in in-process tests (and by a launcher around pytest): a
# launched job must start without them, or its ranks join the wrong world.
DISTRIBUTED_VARIABLES = frozenset({"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE",
                                   "MASTER_ADDR", "MASTER_PORT"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
