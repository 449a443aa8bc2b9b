"""One command-line style for every CLI: `python -m` usage, help with defaults, two spellings per flag.

Underscores are canonical (`--max_seq_length`), as in Hugging Face transformers' examples,
DeepSpeed's launcher (`--deepspeed_config`) and NVIDIA's BERT scripts; every `--a_b` also
parses as `--a-b`, so data_prep's and the benchmarks' older dashed flags keep working. A
flag can also take `aliases=`: the name another command gives the same fact (data_prep's
`--seq_len` accepts the trainer's `--max_seq_length`), each in both spellings too.

The help shows the canonical spelling only, names the `aliases=` in the flag's text and
says once, below the flags, that dashes work; each flag's default is appended unless its
text already states one (a default of None means "see the text", so such texts say what
happens when the flag is absent).

    from bing_bert_pld import cli
    parser = cli.ArgumentParser("bing_bert_pld.train", description="...")
    parser.add_argument("--seq-len", type=int, default=128, aliases=("--max_seq_length",))
"""

from __future__ import annotations

import argparse
from typing import Iterable, Optional

DASH_NOTE = "Every --flag_name is also accepted as --flag-name."


def spellings(flag: str) -> list[str]:
    """The canonical (underscored) spelling of a long flag first, then the dashed one; a
    short flag (`-h`) as given."""
    if not flag.startswith("--"):
        return [flag]
    name = flag[2:]
    return _unique(["--" + name.replace("-", "_"), "--" + name.replace("_", "-")])


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


class BooleanFlag(argparse.Action):
    """`--x` sets True, `--no_x` False (argparse.BooleanOptionalAction's `--no-x` with the
    underscore canonical); every spelling of both is accepted."""

    def __init__(self, option_strings, dest, default=None, required=False, help=None):
        positive = list(option_strings)
        self.negatives = _unique(spelling for flag in positive if flag.startswith("--")
                                 for spelling in spellings("--no_" + flag[2:]))
        super().__init__(positive + self.negatives, dest, nargs=0, default=default,
                         required=required, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, option_string not in self.negatives)

    def format_usage(self) -> str:
        return " | ".join(self.help_flags)


class _Flags:
    """add_argument with both spellings, for the parser and each of its groups (argparse
    builds groups itself, so they need the same method)."""

    def add_argument(self, *names, aliases: tuple[str, ...] = (), **kwargs):
        if not names or not names[0].startswith("-"):  # a positional: its name is not typed
            return super().add_argument(*names, **kwargs)
        if kwargs.get("action") is argparse.BooleanOptionalAction:
            kwargs["action"] = BooleanFlag
        flags = _unique(spelling for name in (*names, *aliases) for spelling in spellings(name))
        action = super().add_argument(*flags, **kwargs)
        shown = _unique(spellings(name)[0] for name in names)
        if isinstance(action, BooleanFlag):
            shown += [spellings("--no_" + flag[2:])[0] for flag in shown if flag.startswith("--")]
        action.help_flags = shown
        action.named_aliases = _unique(spellings(alias)[0] for alias in aliases)
        return action

    def add_argument_group(self, *args, **kwargs):
        group = _ArgumentGroup(self, *args, **kwargs)
        self._action_groups.append(group)
        return group

    def add_mutually_exclusive_group(self, **kwargs):
        group = _MutuallyExclusiveGroup(self, **kwargs)
        self._mutually_exclusive_groups.append(group)
        return group


class _ArgumentGroup(_Flags, argparse._ArgumentGroup):
    pass


class _MutuallyExclusiveGroup(_Flags, argparse._MutuallyExclusiveGroup):
    pass


class HelpFormatter(argparse.HelpFormatter):
    """One line per flag in its canonical spelling, its other names and its default in its text."""

    def _format_action_invocation(self, action) -> str:
        shown = getattr(action, "help_flags", None)
        if not action.option_strings or shown is None:
            return super()._format_action_invocation(action)
        if action.nargs == 0:
            return ", ".join(shown)
        value = self._format_args(action, self._get_default_metavar_for_optional(action))
        return ", ".join(f"{flag} {value}" for flag in shown)

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        named = getattr(action, "named_aliases", ())
        if named:
            text += f" (also {', '.join(named)})"
        default = default_text(action)
        if default is not None and not states_default(text):
            text += f" (default: {default.replace('%', '%%')})"
        return text


def states_default(text: str) -> bool:
    lowered = text.lower()
    return "default:" in lowered or "(default" in lowered or "%(default)" in lowered


def default_text(action: argparse.Action) -> Optional[str]:
    """What the help appends as the flag's default; None where there is nothing to append."""
    if action.required or action.default is argparse.SUPPRESS:
        return None
    if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
        return None  # a positional the user must give
    if isinstance(action, BooleanFlag):
        if action.default is None:
            return None
        return action.help_flags[0] if action.default else action.help_flags[-1]
    if action.nargs == 0:
        return "off"  # store_true / store_false / store_const: absent unless given
    if action.default is None:
        return None  # the text says what happens without it
    if isinstance(action.default, (list, tuple)):
        return " ".join(str(item) for item in action.default) or "none"
    if action.default == "":
        return "''"
    return str(action.default)


class ArgumentParser(_Flags, argparse.ArgumentParser):
    """argparse.ArgumentParser with `prog="python -m <module>"`, this module's help
    formatter and two spellings per flag. Subcommand parsers are of this class too."""

    def __init__(self, module: Optional[str] = None, **kwargs):
        if module is not None:
            kwargs.setdefault("prog", f"python -m {module}")
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)

    def _aliased(self) -> list[argparse.Action]:
        return [action for action in self._actions if len(action.option_strings) > 1
                and getattr(action, "help_flags", None) is not None]

    def format_help(self) -> str:
        if any(len(spellings(flag)) > 1 for action in self._aliased() for flag in action.help_flags):
            if DASH_NOTE not in (self.epilog or ""):
                self.epilog = f"{self.epilog}\n\n{DASH_NOTE}" if self.epilog else DASH_NOTE
        return super().format_help()

    def _get_option_tuples(self, option_string):
        # An abbreviation (--max_st) matches both spellings of one flag: one flag, not ambiguous.
        seen, found = set(), []
        for option in super()._get_option_tuples(option_string):
            if id(option[0]) not in seen:
                seen.add(id(option[0]))
                found.append(option)
        return found

    def error(self, message: str):
        # argparse names a flag by all its spellings ("--seq_len/--seq-len/..."): name it once.
        for action in sorted(self._aliased(), key=lambda a: -len("/".join(a.option_strings))):
            message = message.replace("/".join(action.option_strings), action.help_flags[0])
        super().error(message)
