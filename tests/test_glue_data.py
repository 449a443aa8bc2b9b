"""Reading the nine tasks in the exact layout of the GLUE download, and tokenizing them."""

from __future__ import annotations

import pytest
import torch

from bing_bert_pld.glue.data import TASKS, GlueDataError, encode, get_task, read_split
from bing_bert_pld.tokenizer import build_bert_tokenizer
from tests.test_glue_pretrained import write_vocab

# One header and one or two rows per task, columns as in the real files.
FILES = {
    "CoLA/train.tsv": "gj04\t1\t\tthe cat sat on the mat .\n"
                      "gj04\t0\t*\tcat the mat on sat .\n",
    "SST-2/train.tsv": "sentence\tlabel\nit 's a \"good\" film \t1\na boring plot \t0\n",
    "MRPC/train.tsv": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                      "1\t702876\t702977\tthe cat sat .\tthe cat was sitting .\n",
    "STS-B/train.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\t"
                       "sentence2\tscore\n"
                       "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking "
                       "off.\tAn air plane is taking off.\t5.000\n",
    "QQP/train.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
                     "1\t3\t4\twhy is the sky blue?\twhat makes the sky blue?\t1\n"
                     "2\t5\t6\ta question cut short\n",  # QQP has a few broken rows
    "MNLI/train.tsv": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\t"
                      "sentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\t"
                      "sentence2\tlabel1\tgold_label\n"
                      "0\t31193\t31193n\tgovernment\t( ( x ) )\t( ( y ) )\t(ROOT x)\t(ROOT y)\t"
                      "Conceptually cream skimming has two basic dimensions.\tProduct and "
                      "geography are what make cream skimming work. \tneutral\tneutral\n",
    "MNLI/dev_matched.tsv": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\t"
                            "sentence2_binary_parse\tsentence1_parse\tsentence2_parse\t"
                            "sentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\t"
                            "gold_label\n"
                            "0\t63735\t63735n\tslate\t(x)\t(y)\t(x)\t(y)\tThe new rights are "
                            "nice enough\tEveryone really likes the newest benefits \tneutral\t"
                            "entailment\tneutral\tneutral\tneutral\tneutral\n",
    "MNLI/dev_mismatched.tsv": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\t"
                               "sentence2_binary_parse\tsentence1_parse\tsentence2_parse\t"
                               "sentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\t"
                               "gold_label\n"
                               "0\t75290\t75290c\tletters\t(x)\t(y)\t(x)\t(y)\tYour gift is "
                               "appreciated.\tHundreds of students will benefit.\tentailment\t"
                               "entailment\tentailment\tentailment\tentailment\tentailment\n",
    "QNLI/train.tsv": "index\tquestion\tsentence\tlabel\n"
                      "0\tWhat came into force?\tThe law came into force.\tentailment\n",
    "RTE/train.tsv": "index\tsentence1\tsentence2\tlabel\n"
                     "0\tNo weapons were found.\tWeapons were found.\tnot_entailment\r\n",
    "WNLI/train.tsv": "index\tsentence1\tsentence2\tlabel\n"
                      "0\tI stuck a pin through a carrot.\tThe carrot had a hole.\t1\n",
}


@pytest.fixture
def glue_dir(tmp_path):
    for name, text in FILES.items():
        path = tmp_path / "glue" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))
    return tmp_path / "glue"


def test_every_task_reads_its_real_layout(glue_dir):
    read = {name: read_split(glue_dir, spec, "train") for name, spec in TASKS.items()}
    assert [(e.text_a, e.text_b, e.label) for e in read["CoLA"]] == [
        ("the cat sat on the mat .", None, 1), ("cat the mat on sat .", None, 0)]
    assert read["SST-2"][0].text_a == "it 's a \"good\" film "  # quotes kept as text
    assert read["SST-2"][1].label == 0
    assert read["MRPC"][0].text_a == "the cat sat ."  # the BOM does not hide the header
    assert read["MRPC"][0].text_b == "the cat was sitting ."
    assert read["STS-B"][0].label == 5.0
    assert read["STS-B"][0].text_b == "An air plane is taking off."
    assert len(read["QQP"]) == 1 and read["QQP"][0].label == 1  # the broken row is skipped
    assert read["MNLI"][0].label == TASKS["MNLI"].labels.index("neutral")
    assert read["MNLI"][0].text_a == "Conceptually cream skimming has two basic dimensions."
    assert read["QNLI"][0].label == 0
    assert read["RTE"][0].label == 1  # not_entailment, with a \r\n line end
    assert read["WNLI"][0].label == 1


def test_mnli_has_matched_and_mismatched_dev_sets(glue_dir):
    spec = get_task("mnli")
    assert spec.dev_splits == ("dev_matched", "dev_mismatched")
    matched = read_split(glue_dir, spec, "dev_matched")
    mismatched = read_split(glue_dir, spec, "dev_mismatched")
    assert matched[0].label == spec.labels.index("neutral")  # gold_label, not label1
    assert mismatched[0].label == spec.labels.index("entailment")


def test_task_names_and_errors(glue_dir):
    assert get_task("sst2").name == get_task("SST-2").name == "SST-2"
    assert get_task("stsb").is_regression and get_task("STS-B").num_outputs == 1
    assert get_task("MNLI").num_outputs == 3
    with pytest.raises(GlueDataError, match="unknown GLUE task"):
        get_task("SQuAD")
    (glue_dir / "RTE" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n"
                                              "0\ta\tb\tentailment\n1\ta\tb\tmaybe\n")
    with pytest.raises(GlueDataError, match=r"dev.tsv:3: label 'maybe'"):
        read_split(glue_dir, get_task("RTE"), "dev")
    (glue_dir / "SST-2" / "dev.tsv").write_text("text\tlabel\nfine\t1\n")
    with pytest.raises(GlueDataError, match="column 'sentence' not in the header"):
        read_split(glue_dir, get_task("SST-2"), "dev")
    with pytest.raises(GlueDataError, match="not found"):
        read_split(glue_dir, get_task("QNLI"), "dev")


def test_encoding_pairs_and_batches(tmp_path, glue_dir):
    vocab = write_vocab(tmp_path / "vocab.txt")
    spec = get_task("RTE")
    tokenizer = build_bert_tokenizer(vocab, lowercase=True, max_length=8)
    data = encode(read_split(glue_dir, spec, "train") * 2, tokenizer, spec, pad_id=0)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    ids, types = data.input_ids[0], data.segment_ids[0]
    assert len(ids) == 8  # truncated longest-first
    assert ids[0] == cls_id and ids[-1] == sep_id and ids.count(sep_id) == 2
    assert types == [0] * (ids.index(sep_id) + 1) + [1] * (len(ids) - ids.index(sep_id) - 1)
    short = encode(read_split(glue_dir, get_task("CoLA"), "train"), tokenizer,
                   get_task("CoLA"), pad_id=0)
    batch = short.collate([0, 1])
    assert batch.input_ids.dtype == torch.long and batch.labels.tolist() == [1, 0]
    assert batch.input_mask.sum().item() == sum(len(short.input_ids[i]) for i in (0, 1))
    assert (batch.input_ids[batch.input_mask == 0] == 0).all()
