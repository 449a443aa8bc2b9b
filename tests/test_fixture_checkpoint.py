"""A checkpoint written by an earlier version of the trainer (tests/fixtures/checkpoint_v3) still resumes exactly and still loads."""

import json
import shutil
from pathlib import Path

import pytest

from shard_factory import write_shard_set

from bing_bert_pld import train
from bing_bert_pld.engine import init_distributed
from bing_bert_pld.run.pretrained import read_pretrained

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint_v3"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


@pytest.fixture
def run_dir(tmp_path):
    shards = EXPECTED["shards"]
    write_shard_set(tmp_path / "data", shards["n_shards"], shards["rows_per_shard"], shards["seq_len"],
                    shards["max_pred"], shards["vocab_size"], seed=shards["seed"], split="train")
    (tmp_path / "ds.json").write_text(json.dumps(EXPECTED["deepspeed_config"]))
    shutil.copytree(FIXTURE / "checkpoints", tmp_path / "run" / "checkpoints")
    init_distributed()
    return tmp_path


def test_a_checkpoint_of_an_earlier_version_resumes_exactly(run_dir):
    trainer = train.Trainer(train.parse_args([
        "--deepspeed_config", str(run_dir / "ds.json"), "--model_config", EXPECTED["model_config"],
        "--train_dir", str(run_dir / "data" / "train"), "--output_dir", str(run_dir / "run"),
        "--max_steps", "4", "--checkpoint_interval", "100"]))
    assert (trainer.step, trainer.samples) == (2, 16)
    losses = [trainer.train_step().tolist() for _ in range(2)]
    trainer.loader.close()
    assert losses == EXPECTED["losses_steps_1_to_4"][2:]


def test_a_checkpoint_of_an_earlier_version_loads(run_dir):
    loaded = read_pretrained(run_dir / "run")
    assert loaded.config.num_hidden_layers == 4 and loaded.config.vocab_size == 512
    assert loaded.state_dict["bert.embeddings.word_embeddings.weight"].shape == (512, 64)
