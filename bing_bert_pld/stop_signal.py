"""Stop requests to training ranks: the handlers that remember one, and the registry of one run's rank pids.

A rank catches SIGUSR1 and SIGTERM from the first line of `bing_bert_pld.train` on (before
its imports, which take seconds) and only remembers the request; the trainer acts on it at
the next step boundary. Right after its imports a rank registers itself in
<output_dir>/rank_pids/rank<R>.pid ("host pid start-time"). The launch scripts signal
registered ranks only: a stop is never sent to a rank that could not yet handle it, and
never to another run's ranks (as `pkill -f 'bing_bert_pld[.]train'` would).

    python -m bing_bert_pld.stop_signal signal OUTPUT_DIR [--skip PID ...]
        SIGUSR1 to the run's live ranks on this host; prints "rank R pid P" for each
    python -m bing_bert_pld.stop_signal count OUTPUT_DIR
        how many ranks are registered, on every host (the registry is on a shared file system)
    python -m bing_bert_pld.stop_signal clear OUTPUT_DIR
        forget every registration (a launch script does, before it starts the ranks)
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from . import cli
from .run.layout import RunDir

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopRequest:
    """SIGUSR1 / SIGTERM (SLURM's warning before the time limit, scancel, an operator):
    remembered here; the trainer checkpoints at the next step boundary and exits 0."""

    def __init__(self):
        self.signal_name: Optional[str] = None

    def _handle(self, signum, frame) -> None:
        if self.signal_name is None:  # the first request names the stop; later ones change nothing
            self.signal_name = signal.Signals(signum).name


_request: Optional[StopRequest] = None


def install() -> StopRequest:
    """The process's stop request, its handlers installed on the first call."""
    global _request
    if _request is None:
        _request = StopRequest()
        for sig in STOP_SIGNALS:
            signal.signal(sig, _request._handle)
    return _request


def ignore_further() -> None:
    """For a rank that has finished: from here it only exits. At interpreter shutdown
    Python puts back the default handlers, which end the process on SIGUSR1/SIGTERM, so a
    late stop (a second signal, SLURM's SIGTERM after its warning) would turn a clean exit
    into a death by signal; an ignored signal stays ignored."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def this_host() -> str:
    return os.uname().nodename


def start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), which
    tells a live rank from a later process that reuses its pid; "-" where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "-"
    return stat.rsplit(")", 1)[1].split()[19]  # fields after "pid (comm)" start at 3


@dataclass(frozen=True)
class Registration:
    rank: int
    host: str
    pid: int
    start: str

    def alive(self) -> bool:
        """The registered process still runs (checked on its own host only)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return False  # another user's process under a reused pid
        return self.start == "-" or start_time(self.pid) == self.start


def registry_dir(output_dir: Path) -> Path:
    return RunDir(Path(output_dir)).rank_pids


@dataclass(frozen=True)
class RankEntry:
    """This process's line in the registry, removed when the rank ends."""
    path: Path
    line: str

    def remove(self) -> None:
        try:
            if self.path.read_text() == self.line:  # not a later launch's rank of this number
                self.path.unlink()
            self.path.parent.rmdir()  # the last rank out removes the registry
        except OSError:
            pass


def register(output_dir: Path, rank: int) -> RankEntry:
    path = registry_dir(output_dir) / f"rank{rank}.pid"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = f"{this_host()} {os.getpid()} {start_time(os.getpid())}\n"
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(line)
    os.replace(partial, path)  # whole or absent: a reader never sees half a line
    return RankEntry(path, line)


def registrations(output_dir: Path) -> list[Registration]:
    found = []
    for path in sorted(registry_dir(output_dir).glob("rank*.pid")):
        try:
            host, pid, start = path.read_text().split()
            found.append(Registration(int(path.stem[len("rank"):]), host, int(pid), start))
        except (OSError, ValueError):
            continue  # removed meanwhile, or not ours
    return found


def signal_ranks_here(output_dir: Path, skip: Sequence[int] = ()) -> list[Registration]:
    """SIGUSR1 to every live registered rank on this host (not in `skip`)."""
    signalled = []
    host = this_host()
    for entry in registrations(output_dir):
        if entry.host != host or entry.pid in skip or not entry.alive():
            continue
        try:
            os.kill(entry.pid, signal.SIGUSR1)
        except ProcessLookupError:
            continue
        signalled.append(entry)
    return signalled


def clear(output_dir: Path) -> None:
    for path in registry_dir(output_dir).glob("*"):
        path.unlink(missing_ok=True)
    try:
        registry_dir(output_dir).rmdir()
    except OSError:
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = cli.ArgumentParser("bing_bert_pld.stop_signal", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("signal", "count", "clear"),
                        help="signal: SIGUSR1 to the run's live ranks on this host; count: "
                             "registered ranks on every host; clear: forget every registration")
    parser.add_argument("output_dir", type=Path, help="the run's --output_dir")
    parser.add_argument("--skip", type=int, nargs="*", default=[], metavar="PID",
                        help="pids not to signal (already signalled)")
    args = parser.parse_args(argv)
    if args.action == "signal":
        for entry in signal_ranks_here(args.output_dir, args.skip):
            print(f"rank {entry.rank} pid {entry.pid}")
    elif args.action == "count":
        print(len(registrations(args.output_dir)))
    else:
        clear(args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
