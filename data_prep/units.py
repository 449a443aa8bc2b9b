"""Cut a source's files into work units of about `unit_bytes` of input each.

Units are the grain of parallelism, of resumption and of randomness (each unit's RNG
comes from the seed and the unit's index), so the plan must depend only on the inputs
and the settings, never on the number of processes. Small files are packed together;
big splittable files are cut into byte ranges (see readers.py for the ownership rule).
Units never mix sources, so per-source counts stay exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from data_prep.readers import Piece, is_splittable
from data_prep.sources import InputFile, SourceSpec
from data_prep.textcheck import DEFAULT_ENCODING


@dataclass(frozen=True)
class Unit:
    index: int
    source: str
    kind: str
    pieces: tuple[Piece, ...]
    encoding: str = DEFAULT_ENCODING

    @property
    def bytes(self) -> int:
        return sum(p.end - p.start for p in self.pieces)

    def to_json(self) -> dict:
        described = {"source": self.source, "kind": self.kind,
                     "pieces": [[p.path, p.name, p.start, p.end] for p in self.pieces]}
        if self.encoding != DEFAULT_ENCODING:  # plans of UTF-8 sources stay as they were
            described["encoding"] = self.encoding
        return described

    @staticmethod
    def from_json(index: int, obj: dict) -> "Unit":
        pieces = tuple(Piece(path, name, start, end) for path, name, start, end in obj["pieces"])
        return Unit(index, obj["source"], obj["kind"], pieces, obj.get("encoding", DEFAULT_ENCODING))


def plan_units(sources: list[tuple[SourceSpec, list[InputFile]]], unit_bytes: int) -> list[Unit]:
    units: list[Unit] = []
    for source, files in sources:
        pending: list[Piece] = []
        pending_bytes = 0
        for file in files:
            if file.size == 0:
                continue
            offset = 0
            while offset < file.size:
                if is_splittable(source.kind, file.path):
                    take = min(file.size - offset, unit_bytes - pending_bytes)
                else:
                    take = file.size
                pending.append(Piece(str(file.path), file.name, offset, offset + take))
                pending_bytes += take
                offset += take
                if pending_bytes >= unit_bytes:
                    units.append(Unit(len(units), source.name, source.kind, tuple(pending), source.encoding))
                    pending, pending_bytes = [], 0
        if pending:
            units.append(Unit(len(units), source.name, source.kind, tuple(pending), source.encoding))
    return units
