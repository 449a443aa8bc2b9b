import os
import sys
from pathlib import Path

import pytest

# DeepSpeed picks its accelerator at import; say "cpu" so it does not probe for GPUs.
os.environ.setdefault("DS_ACCELERATOR", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/shard_factory.py


@pytest.fixture(scope="module")
def one_rank_train_set(tmp_path_factory):
    """A factory for the in-process trainer tests: `one_rank_train_set(seq, pred, vocab)`
    writes a 2-shard synthetic training set (manifest in the returned root, shards under
    root / "train") and makes this process a 1-rank group, as train.Trainer needs."""
    from bing_bert_pld.engine import init_distributed  # imports DeepSpeed: only when used
    from shard_factory import write_shard_set

    def write(seq_len: int, max_pred: int, vocab_size: int, rows_per_shard: int = 64) -> Path:
        root = tmp_path_factory.mktemp("data")
        write_shard_set(root, 2, rows_per_shard, seq_len, max_pred, vocab_size, seed=0,
                        split="train")
        init_distributed()
        return root

    return write


def pytest_sessionfinish(session, exitstatus):
    from launch_helpers import remove_shm_buffers

    remove_shm_buffers()
