import os
import sys
from pathlib import Path

# DeepSpeed picks its accelerator at import; say "cpu" so it does not probe for GPUs.
os.environ.setdefault("DS_ACCELERATOR", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/shard_factory.py


def pytest_sessionfinish(session, exitstatus):
    from launch_helpers import remove_shm_buffers

    remove_shm_buffers()
