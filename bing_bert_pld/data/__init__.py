"""The pretraining data loader: a rank's share of a validated HDF5 shard set, read ahead and resumable.

    order             which rows make each rank's batches in each epoch (pure: seed, epoch, rank)
    shards            reads those rows from the HDF5 shards, one array per schema field
    reader_thread     one thread reading ahead into a queue (num_workers=1)
    reader_processes  n processes reading ahead into shared memory (num_workers > 1)
    loader            PretrainingDataLoader: the position, handed-out batches, state_dict()

Each module imports only those above it in this list. The shard set is validated first
(shard_validation.py); the batches are PretrainingBatch (batch.py) in schema.py's fields.
"""

from .loader import PretrainingDataLoader

__all__ = ["PretrainingDataLoader"]
