"""The names of the scalars the trainer logs, for its writer and every reader.

Each name is the TensorBoard tag and the metrics.jsonl key. Units are in the name's
suffix: _s seconds, _frac a fraction in [0, 1], per_sec a rate.
"""

TRAIN_LOSS = "train/loss"
TRAIN_MLM_LOSS = "train/mlm_loss"
TRAIN_NSP_LOSS = "train/nsp_loss"
LR = "train/lr"
SAMPLES = "train/samples"  # samples seen since step 0, across resumes

VAL_LOSS = "val/loss"  # MLM + NSP
VAL_MLM_LOSS = "val/mlm_loss"
VAL_MLM_ACC = "val/mlm_acc"
VAL_NSP_LOSS = "val/nsp_loss"
VAL_NSP_ACC = "val/nsp_acc"

THETA = "pld/theta"  # mean over the log interval's steps
EXPECTED_ACTIVE = "pld/expected_active_layers"
ACTIVE = "pld/active_layers"  # per micro-batch, mean over the log interval
SKIPPED_FRAC = "pld/encoder_flops_skipped_frac"  # since step 0, exact from the gates drawn
# The live estimate of the wall clock PLD saved (time_saved.py): fitted, not assumed.
TIME_SAVED = "pld/time_saved_s"  # since step 0, against the same steps at full depth
TIME_SAVED_FRAC = "pld/time_saved_frac"  # TIME_SAVED / the full-depth time of those steps
SPEEDUP = "pld/speedup_vs_full_depth"  # now: full-depth step time / the interval's step time
FULL_DEPTH_STEP_TIME = "pld/full_depth_step_time_s"  # fitted step time at full depth

SAMPLES_PER_SEC = "perf/samples_per_sec"
STEP_TIME = "perf/step_time_s"
ELAPSED = "perf/elapsed_s"  # wall clock since the run started, across resumes
TRAIN_TIME = "perf/train_time_s"  # training steps only: validation and checkpoints excluded
