"""The trainer's live numbers, in one process: step / total and ETA on the log line, and
the per-step depths the time-saved estimate is fitted on (the fit itself, which needs
real timings, is tested on synthetic steps in test_time_saved.py)."""

import json
import logging
import re

import pytest

from bing_bert_pld import pld, train

SEQ, PRED, VOCAB = 32, 5, 512
DS = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
      "steps_per_print": 10**6, "gradient_clipping": 1.0,
      "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
      "progressive_layer_drop": {"enabled": True, "theta": 0.5, "gamma": 0.2}}
SEED = 42


@pytest.fixture(scope="module")
def data(one_rank_train_set):
    return one_rank_train_set(SEQ, PRED, VOCAB)


def test_log_lines_and_the_depths_behind_the_estimate(tmp_path, data, caplog):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps(DS))
    args = train.parse_args([
        "--deepspeed_config", str(ds), "--model_config", "bert-tiny",
        "--train_dir", str(data / "train"), "--output_dir", str(tmp_path / "run"),
        "--max_seq_length", str(SEQ), "--max_predictions_per_seq", str(PRED),
        "--max_steps", "12", "--log_interval", "4", "--checkpoint_interval", "100",
        "--seed", str(SEED)])
    trainer = train.Trainer(args)
    with caplog.at_level(logging.INFO, logger="bing_bert_pld"):
        assert trainer.train() == "max_steps"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [line.split(" | ")[0] for line in lines] == [
        "step 4/12 (33%)", "step 8/12 (67%)", "step 12/12 (100%)"]
    assert all(re.search(r" \| eta \d+:\d\d:\d\d$", line) for line in lines[1:]), lines
    assert lines[-1].endswith("| eta 0:00:00")

    # The estimate saw each step's blocks summed over its 2 micro-batches, after the
    # first 5 steps of the launch (warm-up), exactly as the gates were drawn.
    schedule = pld.PLDSchedule(0.5, 0.2)
    blocks = [sum(pld.sample_gates(schedule.theta(step), 4, SEED, step, micro).num_active
                  for micro in range(2)) for step in range(12)]
    estimator = trainer.time_saved
    assert estimator.full_depth_layers == 8
    assert [layers for layers, _ in estimator._window] == blocks[5:]
    assert len(set(blocks[5:])) > 1  # several depths to fit, by this seed's gates
    state = json.loads((tmp_path / "run" / "checkpoints" / "global_step12" /
                        "trainer_state.json").read_text())
    assert state["time_saved"] == estimator.state_dict()
