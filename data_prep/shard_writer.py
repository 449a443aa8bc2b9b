"""Write one HDF5 shard in the schema of bing_bert_pld.schema, atomically.

Uncompressed by default: random row reads are fastest. With gzip, rows are chunked
explicitly (`chunk_rows` per chunk): h5py's automatic chunks with compression make
random reads of a few rows decompress far more than they return.
The shard's per-source row counts ride along as an attribute, so a resumed run can
count a finished shard without rebuilding it.
HDF5 builds the file in memory and only its finished bytes go to disk, with a plain
write: an HDF5 library that meets a full disk mid-write leaves its file objects broken
(h5py then raised on close and the process segfaulted at exit), while a plain write
fails cleanly with ENOSPC, which atomic_path reports.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import numpy as np

from bing_bert_pld.schema import FIELDS
from data_prep.fsutil import atomic_path

SOURCE_COUNTS_ATTR = "data_prep_source_rows"


def write_shard(path: Path, columns: dict[str, np.ndarray], source_rows: dict[str, int],
                compression: str | None, chunk_rows: int) -> None:
    """Write the shard. Consumes `columns`: each array is dropped from it once copied into
    the in-memory file, so the shard is held about once, not twice."""
    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        for field in FIELDS:
            data = columns.pop(field.name)
            options = {}
            if compression:
                options = {"compression": compression, "chunks": (min(chunk_rows, len(data)),) + data.shape[1:]}
            f.create_dataset(field.name, data=data, **options)
            del data
        f.attrs[SOURCE_COUNTS_ATTR] = json.dumps(source_rows, sort_keys=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        out.write(image.getbuffer())


def read_source_rows(path: Path) -> dict[str, int]:
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs[SOURCE_COUNTS_ATTR])
