"""The trainer's stateful parts as one set: saved under their names, restored from either trainer_state format."""

import json
from pathlib import Path

import pytest

from bing_bert_pld import train_state
from bing_bert_pld.engine import GateStats
from bing_bert_pld.time_saved import TimeSavedEstimator

FIXTURE_STATE = (Path(__file__).parent / "fixtures" / "checkpoint_v3" / "checkpoints" / "global_step2"
                 / "trainer_state.json")


class Position:
    """A stand-in for the loader's position: the real loader needs shards (tested in test_data_loader)."""

    def __init__(self, consumed=0):
        self.consumed = consumed

    def state_dict(self):
        return {"consumed": self.consumed}

    def load_state_dict(self, state):
        self.consumed = state["consumed"]


def parts(**changes):
    made = {"progress": train_state.Progress(), "pld": GateStats(), "loader": Position(),
            "time_saved": TimeSavedEstimator(full_depth_layers=4)}
    made.update(changes)
    return made


def test_every_part_round_trips_under_its_name():
    saved = parts()
    saved["progress"].samples, saved["progress"].train_seconds = 48, 1.5
    saved["progress"].elapsed_before_launch = 10.0
    saved["progress"].history.append({"step": 3, "event": "fallback", "note": "x"})
    saved["pld"].total_micro_batches, saved["pld"].total_active_layers = 6, 17
    saved["pld"].total_empty_micro_batches = 1
    saved["loader"].consumed = 6
    saved["time_saved"].observe(17, 0.5)
    state = json.loads(json.dumps(train_state.trainer_state(saved, step=6, theta=0.9)))

    assert state["format"] == train_state.FORMAT and (state["step"], state["theta"]) == (6, 0.9)
    assert (state["samples"], state["train_time_s"]) == (48, 1.5) and state["elapsed_s"] >= 10.0
    assert state["pld"] == {"micro_batches": 6, "active_layers": 17, "empty_micro_batches": 1}
    assert state["loader"] == {"consumed": 6} and state["time_saved"]["layers_total"] == 17

    restored = parts()
    train_state.restore(restored, state)
    assert restored["progress"].history == saved["progress"].history
    assert (restored["progress"].samples, restored["progress"].train_seconds) == (48, 1.5)
    assert restored["progress"].elapsed_before_launch == state["elapsed_s"]
    assert restored["pld"].state_dict() == state["pld"]
    assert restored["loader"].consumed == 6
    assert restored["time_saved"].state_dict() == state["time_saved"]


def test_a_part_that_is_off_is_saved_as_null_and_skipped_on_restore():
    state = train_state.trainer_state(parts(pld=None, time_saved=None), step=1)
    assert state["pld"] is None and state["time_saved"] is None
    restored = parts()
    train_state.restore(restored, state)
    assert restored["pld"].state_dict() == {"micro_batches": 0, "active_layers": 0, "empty_micro_batches": 0}


def test_the_format_before_parts_is_upgraded():
    old = json.loads(FIXTURE_STATE.read_text())  # written by commit bf953b6
    assert "format" not in old and old["pld_active_layers"] == 8
    restored = parts(loader=None)  # the real loader's position: tests/test_fixture_checkpoint.py
    train_state.restore(restored, old)
    assert restored["pld"].state_dict() == {"micro_batches": 2, "active_layers": 8, "empty_micro_batches": 0}
    assert restored["progress"].samples == 16 and restored["progress"].history == []
    # The time-saved counter continues from the gates drawn before the save.
    assert restored["time_saved"].state_dict()["layers_total"] == 8


def test_older_states_without_train_time_take_the_elapsed_time():
    old = {"step": 2, "samples": 16, "elapsed_s": 3.0, "pld_micro_batches": 0, "pld_active_layers": 0}
    upgraded = train_state.upgrade(old)
    assert (upgraded["train_time_s"], upgraded["history"]) == (3.0, [])
    assert upgraded["pld"] == {"micro_batches": 0, "active_layers": 0, "empty_micro_batches": 0}
    assert old == {"step": 2, "samples": 16, "elapsed_s": 3.0, "pld_micro_batches": 0,
                   "pld_active_layers": 0}  # the caller's dict is not changed
