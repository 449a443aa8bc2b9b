"""One run as the report reads it: its logged scalars from the TensorBoard events, and its configuration.

RUN_DIR is a training output directory (events in its tensorboard/ folder) or the event
directory itself; a run is named after its directory. Every scalar is kept, sorted by
step, one value per step: a resumed run writes some steps again into a new event file,
and the last value written wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..run.config import newest_run_config
from ..run.layout import RunDir
from ..run.metric_names import THETA

EVENT_GLOB = "events.out.tfevents.*"


class ReportError(RuntimeError):
    """No usable run: the message says which directory and why."""


@dataclass(frozen=True)
class Series:
    """One scalar of one run, sorted by step, one value per step (the last written)."""

    steps: np.ndarray
    values: np.ndarray

    @classmethod
    def from_pairs(cls, steps: Sequence[int], values: Sequence[float]) -> "Series":
        latest = dict(zip(steps, values))  # a restarted run rewrites steps: keep the last
        ordered = sorted(latest)
        return cls(np.asarray(ordered, dtype=np.int64),
                   np.asarray([latest[s] for s in ordered], dtype=np.float64))

    @property
    def last_step(self) -> int:
        return int(self.steps[-1])

    @property
    def last(self) -> float:
        return float(self.values[-1])


@dataclass
class Run:
    name: str
    scalars: dict[str, Series]
    path: str = ""
    run_config: Optional[dict] = None  # the newest checkpoint's run_config.json, if any

    def get(self, tag: str) -> Optional[Series]:
        return self.scalars.get(tag)

    @property
    def theta_bar(self) -> Optional[float]:
        pld = ((self.run_config or {}).get("deepspeed_setup") or {}).get("pld")
        return float(pld["theta"]) if pld else None

    @property
    def uses_pld(self) -> bool:
        theta = self.get(THETA)
        return theta is not None and bool(np.any(theta.values < 1.0))


def run_root(path: Path) -> Path:
    """The run directory of a path given on the command line: the run's own event folder
    stands for the run."""
    return path.parent if RunDir(path.parent).tensorboard == path else path


def find_event_dir(run_dir: Path) -> Path:
    """RUN_DIR's event folder, RUN_DIR itself, or the single folder below holding events."""
    for candidate in (RunDir(run_dir).tensorboard, run_dir):
        if candidate.is_dir() and any(candidate.glob(EVENT_GLOB)):
            return candidate
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such directory")
    holders = sorted({p.parent for p in run_dir.rglob(EVENT_GLOB)})
    if len(holders) == 1:
        return holders[0]
    if not holders:
        raise ReportError(f"{run_dir}: no TensorBoard event files ({EVENT_GLOB}) in it, "
                          f"in {RunDir(run_dir).tensorboard} or below")
    raise ReportError(f"{run_dir}: event files in several folders "
                      f"({', '.join(str(h) for h in holders)}); pass one of them")


def load_run(run_dir: str | Path, name: Optional[str] = None) -> Run:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = Path(run_dir)
    event_dir = find_event_dir(run_dir)
    accumulator = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})  # keep all
    accumulator.Reload()
    scalars = {}
    for tag in accumulator.Tags()["scalars"]:
        events = accumulator.Scalars(tag)
        scalars[tag] = Series.from_pairs([e.step for e in events], [e.value for e in events])
    if name is None:
        name = run_root(run_dir).resolve().name
    return Run(name=name, scalars=scalars, path=str(event_dir),
               run_config=newest_run_config(run_root(run_dir)))


def unique_names(paths: Sequence[Path]) -> list[str]:
    """Each run's name, its directory's; a name given twice gets #1, #2 ... by position."""
    names = [run_root(p).resolve().name for p in paths]
    return [f"{n}#{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]
