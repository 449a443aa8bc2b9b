"""Every command's --help: `python -m` usage, a text and a default for each flag, and both
spellings of a flag (plus the trainer's names in data_prep) parsing to the same value.

In process: each command's own main()/parse_args() builds its real parser, and the first
parse_args call hands that parser to the test instead of parsing (no model is built).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import subprocess
import sys

import pytest

from bing_bert_pld import cli

CLIS = ("bing_bert_pld.train", "bing_bert_pld.config_check", "bing_bert_pld.glue.finetune",
        "bing_bert_pld.glue.summary", "bing_bert_pld.hf_export", "bing_bert_pld.report",
        "bing_bert_pld.fused_ops", "bing_bert_pld.stop_signal", "bing_bert_pld.shm_comm",
        "bing_bert_pld.run",
        "data_prep", "benchmarks.checkpoint_cost", "benchmarks.data_loader",
        "benchmarks.data_prep_throughput", "benchmarks.gpu_check", "benchmarks.gpu_hours",
        "benchmarks.gpu_prepare", "benchmarks.live_time_saved", "benchmarks.pld_speedup",
        "benchmarks.sdpa_backends", "benchmarks.time_to_quality", "benchmarks.vs_huggingface")


# Packages run with `python -m PACKAGE`: the module that builds their parser.
PACKAGE_ENTRIES = {"bing_bert_pld.run": "bing_bert_pld.run.info", "bing_bert_pld.report": "bing_bert_pld.report.cli"}


class _Built(Exception):
    def __init__(self, parser):
        self.parser = parser


def parser_of(module: str) -> cli.ArgumentParser:
    """The parser `python -m module` builds, taken at its parse_args call."""
    if module == "data_prep":
        return importlib.import_module("data_prep.cli")._parser()
    mod = importlib.import_module(PACKAGE_ENTRIES.get(module, module))
    entry = getattr(mod, "parse_args", None) or mod.main

    def hand_over(self, args=None, namespace=None):
        raise _Built(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli.ArgumentParser, "parse_args", hand_over)
        with pytest.raises(_Built) as built:
            entry([]) if inspect.signature(entry).parameters else entry()
    return built.value.parser


def all_parsers(parser: argparse.ArgumentParser):
    """The parser and, recursively, each subcommand's."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from all_parsers(sub)


def parse(module: str, argv: list[str]) -> argparse.Namespace:
    return argparse.ArgumentParser.parse_args(parser_of(module), argv)


def test_the_list_names_every_command_with_an_argument_parser():
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    found = {str(path.relative_to(repo).with_suffix("")).replace("/", ".")
             for folder in ("bing_bert_pld", "data_prep", "benchmarks")
             for path in (repo / folder).rglob("*.py") if "ArgumentParser(" in path.read_text()}
    found = {"data_prep" if name == "data_prep.cli" else name for name in found} - {"bing_bert_pld.cli"}
    found = {next((package for package, entry in PACKAGE_ENTRIES.items() if entry == name), name)
             for name in found}
    assert found == set(CLIS)


@pytest.mark.parametrize("module", CLIS)
def test_help_shows_python_m_usage_and_describes_every_flag_with_its_default(module):
    for parser in all_parsers(parser_of(module)):
        assert isinstance(parser, cli.ArgumentParser)
        text = parser.format_help()
        assert text.startswith(f"usage: {parser.prog} "), text[:200]
        assert parser.prog.startswith(f"python -m {module}")
        formatter = parser._get_formatter()
        required_groups = [g for g in parser._mutually_exclusive_groups if g.required]
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            if isinstance(action, argparse._SubParsersAction):
                assert all(choice.help for choice in action._choices_actions), module
                continue
            name = action.option_strings[0] if action.option_strings else action.dest
            assert action.help and action.help.strip(), f"{parser.prog} {name}: no help text"
            if action.option_strings:
                canonical = action.help_flags[0]
                assert canonical == cli.spellings(canonical)[0], f"{name}: not the underscore spelling"
                assert f"  {canonical}" in text, f"{parser.prog}: {canonical} missing from help"
                must_state_default = not action.required and not any(
                    action in g._group_actions for g in required_groups)
            else:
                must_state_default = action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)
            if must_state_default:
                assert "default" in formatter._get_help_string(action).lower(), \
                    f"{parser.prog} {name}: help states no default"


def test_the_trainer_help_lists_each_flag_once_with_its_default_and_unit():
    text = parser_of("bing_bert_pld.train").format_help()
    assert "--max-time-minutes" not in text and "--max_time_minutes MINUTES" in text
    assert "--deepspeed_config JSON" in text and "--local_rank" not in text
    assert "Every --flag_name is also accepted as --flag-name." in text
    flat = " ".join(text.split())
    for needle in ("optimizer steps between checkpoints; one is also saved at the end and on a "
                   "stop signal (default: 1000)",
                   "stop after this much wall-clock time in minutes, summed across resumes "
                   "(default: unset)",
                   "stop after this many sequences, all ranks together (default: unset)",
                   "optimizer steps between log lines and TensorBoard points (default: 10)",
                   "--resume {auto,none}", "(default: auto)", "(default: off)"):
        assert needle in flat, needle


# (module, argv that satisfies the required flags, canonical flag, value, dest)
SPELLINGS = [
    ("bing_bert_pld.train", ["--deepspeed_config", "d", "--model_config", "m", "--train_dir", "t",
                             "--output_dir", "o"], "--max_time_minutes", "1.5", "max_time_minutes"),
    ("bing_bert_pld.train", ["--deepspeed-config", "d", "--model-config", "m", "--train-dir", "t",
                             "--output-dir", "o"], "--max_predictions_per_seq", "80",
     "max_predictions_per_seq"),
    ("bing_bert_pld.config_check", ["--deepspeed_config", "d", "--model_config", "m"],
     "--world_size", "64", "world_size"),
    ("bing_bert_pld.glue.finetune", ["--task", "RTE", "--data_dir", "g", "--init", "i",
                                     "--output_dir", "o", "--deepspeed_config", "d"],
     "--per_device_train_batch_size", "16", "per_device_train_batch_size"),
    ("bing_bert_pld.glue.finetune", ["--task", "RTE", "--data_dir", "g", "--init", "i",
                                     "--output_dir", "o", "--deepspeed_config", "d"],
     "--num_train_epochs", "2", "num_train_epochs"),
    ("bing_bert_pld.glue.summary", ["runs"], "--out", "s.md", "out"),
    ("bing_bert_pld.report", ["a", "b", "--out", "r"], "--plateau", "7.2", "plateau"),
    ("data_prep", ["instances", "--sentences", "s", "--vocab", "v", "--output", "o"],
     "--seq_len", "512", "seq_len"),
    ("data_prep", ["all", "--source", "text:x", "--vocab-size", "99", "--output", "o"],
     "--work_dir", "w", "work_dir"),
    ("data_prep", ["sentences", "--source", "text:x", "--output", "o"], "--min_doc_words", "7",
     "min_doc_words"),
    ("benchmarks.pld_speedup", [], "--compile_backend", "aot_eager", "compile_backend"),
    ("benchmarks.data_loader", [], "--rows_per_shard", "64", "rows_per_shard"),
    ("benchmarks.gpu_check", [], "--budget_s", "900", "budget_s"),
    ("benchmarks.time_to_quality", [], "--val_interval", "50", "val_interval"),
    ("benchmarks.data_prep_throughput", [], "--unit_mb", "2", "unit_mb"),
    ("benchmarks.gpu_hours", [], "--phase1_steps", "1000", "phase1_steps"),
]


@pytest.mark.parametrize("module,base,flag,value,dest", SPELLINGS)
def test_dashed_and_underscored_spellings_parse_to_the_same_value(module, base, flag, value, dest):
    underscored = parse(module, base + [flag, value])
    dashed = parse(module, base + [flag.replace("_", "-"), value])
    with_equals = parse(module, base + [f"{flag.replace('_', '-')}={value}"])
    assert vars(underscored) == vars(dashed) == vars(with_equals)
    assert str(getattr(underscored, dest)) == str(type(getattr(underscored, dest))(value))
    assert getattr(underscored, dest) != getattr(parse(module, base), dest)


def test_the_trainer_takes_both_spellings():
    from bing_bert_pld.train import parse_args
    common = ["--deepspeed_config", "d", "--model_config", "m", "--train_dir", "t", "--output_dir", "o"]
    assert parse_args(common + ["--max_steps", "7", "--compile_layers"]) == \
        parse_args(common + ["--max-steps", "7", "--compile-layers"])
    assert parse_args(common + ["--max_steps", "7"]).max_steps == 7


@pytest.mark.parametrize("flag", ["--max_seq_length", "--max-seq-length", "--seq-len", "--seq_len"])
def test_data_prep_accepts_the_trainers_names(flag):
    base = ["instances", "--sentences", "s", "--vocab_file", "v", "--output", "o"]
    args = parse("data_prep", base + [flag, "512", "--max_predictions_per_seq", "80"])
    assert (args.seq_len, args.max_pred, str(args.vocab)) == (512, 80, "v")
    all_stages = next(p for p in all_parsers(parser_of("data_prep")) if p.prog.endswith(" all"))
    assert "(also --max_seq_length)" in " ".join(all_stages.format_help().split())


def test_data_prep_main_runs_with_the_trainers_name(tmp_path, capsys):
    """Through main(): the flag is accepted and the stage fails on its input instead (one error line)."""
    from data_prep.cli import main
    code = main(["instances", "--sentences", str(tmp_path / "none"), "--vocab", str(tmp_path / "none.txt"),
                 "--output", str(tmp_path / "out"), "--max_seq_length", "128", "--no_progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "unrecognized" not in err


def test_boolean_flags_and_abbreviations_take_both_spellings():
    base = ["instances", "--sentences", "s", "--vocab", "v", "--output", "o"]
    assert parse("data_prep", base).lowercase is True
    assert parse("data_prep", base + ["--no_lowercase"]).lowercase is False
    assert parse("data_prep", base + ["--no-lowercase"]).lowercase is False
    assert parse("data_prep", base + ["--no-lowercase", "--lowercase"]).lowercase is True
    assert parse("data_prep", base + ["--no-progress"]).progress is False
    # An abbreviation matches both spellings of one flag: still one flag, not ambiguous.
    assert parse("bing_bert_pld.config_check", ["--deepspeed_config", "d", "--model_config", "m",
                                                "--world", "8"]).world_size == 8


def test_a_bad_value_names_the_flag_once(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse("data_prep", ["instances", "--sentences", "s", "--vocab", "v", "--output", "o",
                            "--max-seq-length", "x"])
    err = capsys.readouterr().err.splitlines()[-1]
    assert exit_.value.code == 2
    assert err == "python -m data_prep instances: error: argument --seq_len: invalid int value: 'x'"


def test_spellings_and_help_flags():
    assert cli.spellings("--max-seq-length") == ["--max_seq_length", "--max-seq-length"]
    assert cli.spellings("--seed") == ["--seed"] and cli.spellings("-h") == ["-h"]
    parser = cli.ArgumentParser("x")
    action = parser.add_argument("--a-b", type=int, default=3, aliases=("--c_d",), help="h")
    assert action.option_strings == ["--a_b", "--a-b", "--c_d", "--c-d"]
    assert (action.help_flags, action.named_aliases, action.dest) == (["--a_b"], ["--c_d"], "a_b")
    assert " ".join(parser.format_help().split()).endswith(
        "--a_b A_B h (also --c_d) (default: 3) Every --flag_name is also accepted as --flag-name.")


@pytest.mark.parametrize("module", ["bing_bert_pld.config_check", "data_prep"])
def test_python_m_help_in_a_fresh_process(module):
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m {module} ")
