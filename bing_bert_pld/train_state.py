"""The trainer's stateful parts saved and restored as one set.

Each part has state_dict() / load_state_dict(); the trainer names them once
(`{"progress": ..., "pld": ..., "loader": ..., "time_saved": ...}`, as torchtitan's
Trainer does with its `states`), and `trainer_state` / `restore` handle the set. The
result is checkpoint's trainer_state.json: the progress counters stay at its top level
(step, samples, elapsed_s: what a person, `python -m bing_bert_pld.run info` and the
checkpoint verifier read), each other part under its own name.

`upgrade` reads the format written before the parts had their own states (flat
`pld_*` counters; tests/fixtures/checkpoint_v3).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

FORMAT = 2  # 1 (no "format" key): PLD totals as flat pld_* keys


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class Progress:
    """Samples seen, wall-clock time and training time since step 0, across launches, and
    the run's history (allowed configuration changes, checkpoint fallbacks)."""

    samples: int = 0
    train_seconds: float = 0.0  # inside training steps only
    elapsed_before_launch: float = 0.0
    history: list[dict] = field(default_factory=list)
    launch_started: float = field(default_factory=time.perf_counter)

    def start_launch(self) -> None:
        self.launch_started = time.perf_counter()

    def elapsed(self) -> float:
        return self.elapsed_before_launch + time.perf_counter() - self.launch_started

    def state_dict(self) -> dict:
        return {"samples": self.samples, "elapsed_s": self.elapsed(),
                "train_time_s": self.train_seconds, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.samples = int(state["samples"])
        self.elapsed_before_launch = float(state["elapsed_s"])
        self.train_seconds = float(state["train_time_s"])
        self.history = list(state["history"])


def trainer_state(parts: dict[str, Optional[Stateful]], **run_facts: Any) -> dict:
    """trainer_state.json's content: run_facts (step, world_size, ...), the progress
    counters, and every other part's state under its name (None: the part is off)."""
    state = {"format": FORMAT, **run_facts, **parts["progress"].state_dict()}
    for name, part in parts.items():
        if name != "progress":
            state[name] = part.state_dict() if part is not None else None
    return state


def restore(parts: dict[str, Optional[Stateful]], saved: dict) -> None:
    """Load every part present in this run from trainer_state.json's content (upgraded)."""
    saved = upgrade(saved)
    parts["progress"].load_state_dict(saved)
    for name, part in parts.items():
        if name != "progress" and part is not None and saved.get(name) is not None:
            part.load_state_dict(saved[name])


def upgrade(saved: dict) -> dict:
    """trainer_state.json of any format as the current one."""
    if saved.get("format", 1) >= FORMAT:
        return saved
    state = dict(saved)
    # Before train_time_s was kept: the elapsed time is the best bound on it.
    state.setdefault("train_time_s", state["elapsed_s"])
    state.setdefault("history", [])
    pld = None
    if "pld_micro_batches" in state:
        pld = {"micro_batches": state.pop("pld_micro_batches"),
               "active_layers": state.pop("pld_active_layers"),
               "empty_micro_batches": state.pop("pld_empty_micro_batches", 0)}
    state["pld"] = pld
    if state.get("time_saved") is not None and pld is not None:
        # The estimator's counter at its last observation was the gate total at the save.
        state["time_saved"] = {"layers_total": pld["active_layers"], **state["time_saved"]}
    state["format"] = FORMAT
    return state
