"""A loss or weights that stop being finite end the run with one `error:` line and are
never checkpointed; an overflow step DeepSpeed skipped (fp16 / bf16 loss scaling) is not
an error."""

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from bing_bert_pld import train
from bing_bert_pld.run import checkpoint, layout
from bing_bert_pld.divergence import EXIT_CODE, NonFiniteError, StepLossCheck

SEQ, PRED, VOCAB = 32, 5, 512
ADAM = {"train_micro_batch_size_per_gpu": 8, "steps_per_print": 10**6, "gradient_clipping": 1.0,
        "optimizer": {"type": "Adam", "params": {"lr": 1e-3}}}


@pytest.fixture(scope="module")
def data(one_rank_train_set):
    return one_rank_train_set(SEQ, PRED, VOCAB)


def argv(tmp_path, data, ds, **overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    args = {"deepspeed_config": tmp_path / "ds.json", "model_config": "bert-tiny",
            "train_dir": data / "train", "output_dir": tmp_path / "run",
            "max_seq_length": SEQ, "max_predictions_per_seq": PRED, "max_steps": 4,
            "log_interval": 1, "checkpoint_interval": 1, **overrides}
    return [item for key, value in args.items() for item in (f"--{key}", str(value))]


def saved_tags(root: Path, step: int) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.startswith(f"global_step{step}")]


def assert_latest_is_finite(root: Path, step: int) -> None:
    tag = layout.latest_tag(root)
    assert tag is not None and tag.startswith(f"global_step{step}")
    states = list((root / tag).rglob("mp_rank_00_model_states.pt"))
    assert len(states) == 1
    module = torch.load(states[0], map_location="cpu", weights_only=False)["module"]
    assert all(bool(torch.isfinite(t).all()) for t in module.values())


def nan_after_embeddings(trainer):
    """Fault injection: while `on` is set, the embeddings' output is NaN (the weights stay
    as they are), so the loss and every gradient are NaN."""
    switch = {"on": False}

    def hook(module, inputs, output):
        return output * math.nan if switch["on"] else output

    trainer.engine.module.bert.embeddings.register_forward_hook(hook)
    return switch


def test_a_diverging_run_stops_with_one_line_and_keeps_the_last_finite_checkpoint(
        tmp_path, data, capsys, caplog):
    caplog.set_level(logging.INFO, logger="bing_bert_pld")
    ds = {**ADAM, "optimizer": {"type": "Adam", "params": {"lr": 1e6}}}  # NaN at step 2
    code = train.main(argv(tmp_path, data, ds))
    err = capsys.readouterr().err
    assert code == EXIT_CODE == 3
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith("error: the loss is not finite at step 2 (this rank's loss, mlm, "
                                "nsp: nan, nan, nan; lr 1e+06) and the optimizer step was applied")
    root = tmp_path / "run" / "checkpoints"
    assert saved_tags(root, 2) == []  # nothing after the divergence was written
    assert_latest_is_finite(root, 1)
    # No scheduler block: warned once, at config load.
    warnings = [r for r in caplog.records if "no LR schedule configured" in r.getMessage()]
    assert len(warnings) == 1 and "lr 1000000.0 is used from the first step" in warnings[0].getMessage()


def test_non_finite_weights_are_never_saved_and_a_nan_loss_stops_the_step(tmp_path, data):
    trainer = train.Trainer(train.parse_args(argv(tmp_path, data, ADAM, checkpoint_interval=2)))
    for _ in range(2):
        trainer.train_step()
    trainer.save()
    root = tmp_path / "run" / "checkpoints"
    module = trainer.engine.module
    with torch.no_grad():  # a position the 32-token batches never reach: the loss stays finite
        module.bert.embeddings.position_embeddings.weight[100, 0] = math.nan
    assert torch.isfinite(trainer.train_step()).all()
    with pytest.raises(NonFiniteError, match=r"the weights are not finite at step 3 \(bert.embeddings."
                                             r"position_embeddings.weight on this rank\): refusing"):
        trainer.save()
    with torch.no_grad():
        for param in module.parameters():
            param.view(-1)[0] = math.nan
    with pytest.raises(NonFiniteError, match="the loss is not finite at step 4"):
        trainer.train_step()
    trainer.loader.close()
    assert saved_tags(root, 3) == saved_tags(root, 4) == []
    assert_latest_is_finite(root, 2)


def test_an_overflow_step_deepspeed_skipped_is_honoured_until_it_repeats(tmp_path, data):
    """bf16 under ZeRO-1 skips a step whose gradients overflow, as fp16's loss scaling does
    (fp16 itself needs a GPU): the NaN loss of a skipped step is not an error."""
    ds = {**ADAM, "bf16": {"enabled": True}, "zero_optimization": {"stage": 1}}
    trainer = train.Trainer(train.parse_args(argv(tmp_path, data, ds, max_steps=10)))
    nan = nan_after_embeddings(trainer)
    trainer.train_step()
    nan["on"] = True
    assert torch.isnan(trainer.train_step()).all()  # skipped by DeepSpeed: no error
    assert trainer.engine.skipped_steps == 1
    nan["on"] = False
    assert torch.isfinite(trainer.train_step()).all()
    trainer.save()
    assert_latest_is_finite(tmp_path / "run" / "checkpoints", 3)  # the weights stayed finite

    trainer.loss_check = StepLossCheck(max_skipped_in_a_row=2)
    nan["on"] = True
    trainer.train_step()
    with pytest.raises(NonFiniteError, match=r"not finite at step 5 .* for 2 steps in a row; "
                                             r"DeepSpeed skipped each"):
        trainer.train_step()
    trainer.loader.close()
    assert trainer.engine.skipped_steps == 3


def test_the_same_nan_loss_without_a_skip_stops_at_once(tmp_path, data):
    trainer = train.Trainer(train.parse_args(argv(tmp_path, data, ADAM)))
    nan = nan_after_embeddings(trainer)
    trainer.train_step()
    nan["on"] = True
    with pytest.raises(NonFiniteError, match="not finite at step 2 .* the optimizer step was applied"):
        trainer.train_step()
    trainer.loader.close()
    assert trainer.engine.skipped_steps == 0
