"""The time-to-quality benchmark's numbers: the unigram plateau and the time to a target."""

import math

import numpy as np
import pytest

from benchmarks import quality_metrics as qm
from benchmarks import time_to_quality as ttq
from shard_factory import make_arrays, write_shard


def shard(path, masked_ids, positions):
    arrays = make_arrays(len(masked_ids), 16, 4, 64, np.random.default_rng(0))
    arrays["masked_lm_ids"][:] = masked_ids
    arrays["masked_lm_positions"][:] = positions
    return write_shard(path, arrays)


def test_unigram_plateau_is_exact_on_a_tiny_shard(tmp_path):
    # Scored slots (position != 0): train ids 5, 5, 6, 7 ; the id 9 slot is padding.
    train = shard(tmp_path / "train.hdf5", [[5, 5, 6, 0], [7, 9, 0, 0]],
                  [[1, 2, 3, 0], [4, 0, 0, 0]])
    val = shard(tmp_path / "val.hdf5", [[5, 8, 0, 0]], [[2, 5, 0, 0]])
    counts = qm.masked_token_counts([train], 64)
    assert counts.sum() == 4 and (counts[5], counts[6], counts[7], counts[9]) == (2, 1, 1, 0)
    plateau = qm.unigram_plateau([train], [val], 64)
    assert plateau.train_entropy == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)),
                                                  abs=1e-12)  # 1.0397 nats
    # Validation: id 5 has (2 + 1) / (4 + 64), id 8 (never masked in train) 1 / 68.
    expected = -(math.log(3 / 68) + math.log(1 / 68)) / 2
    assert plateau.validation == pytest.approx(expected, abs=1e-12)
    assert (plateau.train_tokens, plateau.validation_tokens) == (4, 2)


def test_masked_ids_beyond_the_vocabulary_are_an_error(tmp_path):
    bad = shard(tmp_path / "bad.hdf5", [[5, 70, 0, 0]], [[1, 2, 0, 0]])
    with pytest.raises(ValueError, match="masked_lm_ids up to 70, beyond the vocabulary of 64"):
        qm.masked_token_counts([bad], 64)


def test_time_to_reach_interpolates_between_evaluations():
    times, losses = [10.0, 20.0, 30.0, 40.0], [8.0, 7.0, 6.0, 5.5]
    assert qm.time_to_reach(times, losses, 6.5) == pytest.approx(25.0)  # halfway 7.0 -> 6.0
    assert qm.time_to_reach(times, losses, 6.0) == 30.0  # reached exactly at an evaluation
    assert qm.time_to_reach(times, losses, 9.0) == 10.0  # already there at the first one
    assert qm.time_to_reach(times, losses, 5.0) is None
    # The first crossing counts, not a later dip; a NaN (diverged) evaluation never reaches.
    assert qm.time_to_reach([1, 2, 3, 4], [6.0, 4.0, 7.0, 3.0], 5.0) == pytest.approx(1.5)
    assert qm.time_to_reach([1, 2, 3], [float("nan"), 4.0, 3.0], 5.0) == 2.0
    assert qm.time_to_reach([1, 2], [float("nan"), float("inf")], 5.0) is None


def curve(arm, seed, times, losses):
    return ttq.Curve(f"{arm}-s{seed}", arm, seed, times, [100 * t for t in times], losses,
                     steps=len(times), train_time=times[-1], time_per_sample=0.01)


def test_summary_targets_speedups_and_spread_on_synthetic_curves():
    plateau = qm.Plateau(train_entropy=6.9, validation=7.0, train_tokens=1, validation_tokens=1)
    arms = ["postln_baseline", "preln_baseline", "preln_pld", "postln_high"]
    curves = {}
    for seed, pld_end in ((1, 3.5), (2, 3.0)):
        curves[("postln_baseline", seed)] = curve("postln_baseline", seed, [100, 200, 300, 400], [7.0, 6.5, 6.0, 5.0])
        curves[("preln_baseline", seed)] = curve("preln_baseline", seed, [100, 200, 300, 400], [6.0, 5.0, 4.5, 4.0])
        curves[("preln_pld", seed)] = curve("preln_pld", seed, [100, 200, 300, 400], [5.5, 4.5, 4.0, pld_end])
        curves[("postln_high", seed)] = curve("postln_high", seed, [100, 200, 300, 400], [7.0, float("nan"), 9.0, 9.0])
    summary = ttq.summarize(curves, plateau, [1, 2], arms)
    seed1 = summary["per_seed"][1]
    assert seed1["targets"] == {"postln": 5.0, "preln": 4.0}
    runs = seed1["runs"]
    # Post-LN target 5.0: the Post-LN baseline at 400 s, Pre-LN at 200 s, PLD at 150 s.
    assert (runs["postln_baseline"]["time_to_postln_s"], runs["preln_baseline"]["time_to_postln_s"],
            runs["preln_pld"]["time_to_postln_s"]) == (400.0, 200.0, pytest.approx(150.0))
    assert runs["preln_pld"]["speedup_vs_postln"] == pytest.approx(400 / 150)
    # Pre-LN target 4.0: its baseline at 400 s, PLD at 300 s; Post-LN never.
    assert runs["preln_pld"]["time_to_preln_s"] == 300.0
    assert runs["preln_pld"]["speedup_vs_preln"] == pytest.approx(4 / 3)
    assert runs["postln_baseline"]["time_to_preln_s"] is None
    assert runs["postln_baseline"]["speedup_vs_preln"] is None
    assert runs["postln_high"]["diverged"] is True
    assert runs["preln_pld"]["below_plateau_by"] == pytest.approx(3.5)
    # Over seeds: seed 2's PLD ends lower (3.0) but reaches both targets at the same times.
    assert summary["speedups"]["preln_pld vs preln"] == {"mean": pytest.approx(4 / 3),
                                                        "min": pytest.approx(4 / 3), "max": pytest.approx(4 / 3)}
    assert summary["speedups"]["preln_baseline vs postln"]["mean"] == pytest.approx(2.0)
    verdict = ttq.post_ln_high_verdict(summary, plateau)
    assert verdict == ("Post-LN at the high lr: seed 1: diverged (non-finite validation loss); "
                       "seed 2: diverged (non-finite validation loss)")
    text = ttq.format_summary(summary, verdict)
    assert "| preln_pld | 3.5000 | 3.500 | 4 | 400.0 | 10.0 | 150.0 | 2.67x | 300.0 | 1.33x |" in text
    assert "| postln_baseline | 5.0000 | 2.000 | 4 | 400.0 | 10.0 | 400.0 | 1.00x | not reached | - |" in text


def test_arms_differ_only_in_learning_rate_pld_and_norm_placement(tmp_path):
    args = ttq.parse_args(["--out", str(tmp_path), "--arms", "all"])
    configs = ttq.write_configs(args, vocab_size=4096)
    import json
    ds = {arm: json.loads(paths[0].read_text()) for arm, paths in configs.items()}
    assert ds["preln_pld"].pop("progressive_layer_drop") == {"enabled": True, "theta": 0.5, "gamma": 0.01}
    assert ds["preln_pld"] == ds["preln_baseline"] == ds["postln_high"]
    assert ds["postln_baseline"]["optimizer"]["params"]["lr"] == 1e-4
    ds["postln_baseline"]["optimizer"]["params"]["lr"] = 1e-3
    assert ds["postln_baseline"] == ds["preln_baseline"]
    models = {arm: json.loads(paths[1].read_text()) for arm, paths in configs.items()}
    assert models["preln_pld"]["pre_layer_norm"] and not models["postln_baseline"]["pre_layer_norm"]
    assert {k: v for k, v in models["preln_pld"].items() if k != "pre_layer_norm"} == \
        {k: v for k, v in models["postln_high"].items() if k != "pre_layer_norm"}
    assert models["preln_pld"]["num_hidden_layers"] == 12 and models["preln_pld"]["vocab_size"] == 4096


def test_a_target_near_the_plateau_is_flagged():
    arms = ["postln_baseline", "preln_baseline"]
    curves = {("postln_baseline", 1): curve("postln_baseline", 1, [10, 20], [7.0, 6.95]),
              ("preln_baseline", 1): curve("preln_baseline", 1, [10, 20], [6.5, 5.0])}
    plateau = qm.Plateau(train_entropy=6.9, validation=7.0, train_tokens=1, validation_tokens=1)
    text = ttq.format_summary(ttq.summarize(curves, plateau, [1], arms), None)
    assert ("postln baseline 6.9500 (0.050 below the plateau: NOT clearly below it, so its "
            "speedups compare how fast runs learned frequencies)") in text
    assert "preln baseline 5.0000 (2.000 below the plateau)" in text


def test_omp_num_threads_sets_the_trainers_cpu_threads():
    """The benchmark's --threads reaches the trainer through OMP_NUM_THREADS."""
    import os
    import subprocess
    import sys

    code = ("from bing_bert_pld.engine import init_distributed; init_distributed(); "
            "import torch; print(torch.get_num_threads())")
    # In-process trainers of earlier tests leave RANK, MASTER_PORT, ... (a port in use) behind.
    launched = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launched}
    result = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "1"
