"""Instance units: duplicated passes mask the same text differently."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict

import numpy as np

from data_prep.cleaning import CleaningConfig, clean_document
from data_prep.instances import InstanceConfig, InstanceUnitTask, process_unit
from data_prep.splitting import split_sentences


def test_duplicated_passes_mask_identical_pairs_differently(tmp_path, bible_dir, vocab_path):
    # 60 documents of exactly two sentences: each pass makes one pair per document,
    # A = first sentence, B = second when "true next" is drawn, so passes that both
    # draw "true next" give the same text, which must get its own masks each time.
    kept, _ = clean_document((bible_dir / "01_genesis.txt").read_text().splitlines(), CleaningConfig())
    sentences = split_sentences(kept)[:120]
    text = tmp_path / "unit_00000.txt"
    text.write_text("".join(f"{a}\n{b}\n\n" for a, b in zip(sentences[::2], sentences[1::2])))
    shutil.copy(vocab_path, tmp_path / "vocab.txt")
    config = InstanceConfig(duplication=2, short_seq_prob=0.0, validation_fraction=0.0)
    stats = process_unit(InstanceUnitTask(0, 0, str(text), str(tmp_path), str(tmp_path / "vocab.txt"), True,
                                          config, buckets=1))
    records = np.load(tmp_path / "unit_00000.npy")
    # Per document and pass: one pair, or two when B was random (the second sentence
    # is then read again and, alone at the end, pairs with random text).
    true_next = int((records["next_sentence_label"] == 0).sum())
    assert stats["instances"] == {"train": len(records), "validation": 0}
    assert len(records) == true_next + 2 * (120 - true_next)
    masks_by_text = defaultdict(list)
    for record in records[records["next_sentence_label"] == 0]:
        original = record["input_ids"].astype(np.int64)
        real = record["masked_lm_positions"] != 0
        original[record["masked_lm_positions"][real]] = record["masked_lm_ids"][real]
        masks_by_text[original.tobytes()].append(record["masked_lm_positions"].tobytes())
    twice = [masks for masks in masks_by_text.values() if len(masks) == 2]
    assert len(twice) >= 10
    assert all(first != second for first, second in twice)
    assert json.loads((tmp_path / "unit_00000.json").read_text())["bucket_offsets"][0] == [0, len(records)]
