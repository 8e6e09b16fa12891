"""Every command's `--help`, checked mechanically: only its own options, each with one line of
meaning and its default where it has one, lines within 80 columns, and an example that parses."""

from __future__ import annotations

import argparse
import shlex

import pytest

from tui_backfill.frontends.cli import HASH_ONLY, build_parser
from tui_backfill.frontends.helptext import shown
from tui_backfill.pipelines.config import BY_NAME, OPTIONS, PIPELINE_DEFAULTS
from tui_backfill.pipelines.publish.settings import BY_NAME as PUBLISH_BY_NAME


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command's parser by its words: "", "run", "publish worker", ..."""
    found = {" ".join(path): parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_commands(sub, (*path, name)))
    return found


COMMANDS = _commands(build_parser())

# Flags a run reads and nothing else: `coverage` and the commands that only read or signal the
# state must not offer them.
RUN_FLAGS = {"--no-ui", "--dry-run", "--fresh", "--from-start", "--serve", "--progress-interval"}
RUN_ONLY = {
    option.flag
    for option in OPTIONS
    if option.name
    not in ("job", "state", "skus_file", "skus_db", "skus_query", "angles", "key_template")
    and option.name not in ("bucket", "endpoint_url", "region", "path_style", "timeout")
} | RUN_FLAGS
ALL_SETTINGS = {option.flag for option in OPTIONS if option.name not in ("job", "state")}
PUBLISH_WORKER = {opt.flag for opt in PUBLISH_BY_NAME.values() if opt.name != "database_url"}
IMAGE_FLAGS = {
    "--limit-skus", "--angles", "--only-missing", "--skus-file", "--skus-db", "--skus-query",
    "--origin", "--key-template", "--exists-check", "--max-bandwidth", "--pipeline",
}  # fmt: skip
READ_ONLY = ALL_SETTINGS | RUN_FLAGS | {"--database-url", "--env-file"}
FOREIGN: dict[str, set[str]] = {
    "": set(),
    "run": {"--database-url", "--env-file", "--json", "--host", "--port"},
    "hash-index": IMAGE_FLAGS | {"--database-url", "--json"},
    "status": READ_ONLY,
    "runs": READ_ONLY,
    "failed": READ_ONLY,
    "pause": READ_ONLY,
    "resume": READ_ONLY
    - {"--concurrency", "--max-concurrency", "--timeout", "--max-bandwidth"}
    - {"--progress-interval", "--notify-url", "--no-ui", "--serve"},
    "attach": READ_ONLY,
    "serve": RUN_FLAGS,
    "coverage": RUN_ONLY | {"--database-url"},
    "publish": set(),
    "publish worker": ALL_SETTINGS
    - {"--bucket", "--endpoint-url", "--region", "--path-style"}
    - {"--concurrency", "--timeout"},
    "publish enqueue": PUBLISH_WORKER - {"--max-retries"} | {"--state"},
    "publish init-db": PUBLISH_WORKER | {"--state"},
    "publish status": PUBLISH_WORKER | {"--state"},
    "publish pause": PUBLISH_WORKER | {"--state"},
    "publish resume": PUBLISH_WORKER | {"--state"},
    "publish runs": PUBLISH_WORKER | {"--state"},
    "demo": {"--job", "--state", "--config", "--concurrency", "--bucket", "--origin"},
}


def _real_default(command: str, action: argparse.Action) -> object:
    """The value an option takes when not given (the parsers keep None for the settings
    layering: flags, environment, file, defaults)."""
    if isinstance(action, argparse._StoreTrueAction):
        return None  # a switch: off unless given
    if action.default is not None:
        return action.default
    if command.startswith("publish"):
        opt = PUBLISH_BY_NAME.get(action.dest)
        return None if opt is None or opt.name == "concurrency" else opt.default
    option = BY_NAME.get(action.dest)
    if option is None or (command == "resume" and action.dest in RESUME_PACING):
        return None  # resume: "the run's own" (checked apart)
    if action.dest == "job":
        return {"hash-index": "hash-index"}.get(command, "default")
    defaults = PIPELINE_DEFAULTS["hash-index"] if command == "hash-index" else {}
    value = defaults.get(option.name, option.default)
    return None if value == "" else value


RESUME_PACING = ("concurrency", "max_concurrency", "timeout", "max_bandwidth")


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)
    ]


def test_every_command_is_checked() -> None:
    assert set(COMMANDS) == set(FOREIGN), "a new command: say which options are not its own"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_lists_own_options_with_defaults_and_an_example(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    parser = COMMANDS[command]
    text = parser.format_help()  # raises on a stray % in a help string

    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]

    listed = [action for action in _options(parser) if action.help != argparse.SUPPRESS]
    flags = {flag for action in listed for flag in action.option_strings}
    assert not flags & FOREIGN[command], f"not options of `{command}`"
    for action in _options(parser):
        if action.help == argparse.SUPPRESS:
            if command == "hash-index":  # the flags of `serve` for the same job
                assert action.dest == "pipeline"
                continue
            # accepted for a hash-index job, listed by `hash-index --help`
            assert action.dest in HASH_ONLY and command in ("run", "serve"), action.dest
            assert "hash-index --help" in " ".join(text.split())
            continue
        if isinstance(action, argparse._VersionAction):
            continue
        assert action.help and len(action.help) > 8, f"{action.option_strings} has no meaning"
        if command == "resume" and action.dest in RESUME_PACING:
            assert "default: the run's own" in action.help, action.dest
        default = _real_default(command, action)
        if default is not None:
            assert f"default: {shown(default)}" in action.help.replace("%%", "%"), (
                action.option_strings,
                action.help,
            )

    # It ends with an example, and each example parses with this command's parser.
    head, _, examples = text.rpartition("\nExample")
    assert head and examples.startswith((":", "s:")), "no Example section at the end"
    commands = " ".join(examples.split(":", 1)[1].replace("\\\n", " ").split("\n")).split(
        "tui-backfill"
    )
    assert len(commands) > 1
    for line in commands[1:]:
        words = shlex.split(line)
        assert words[: len(command.split())] == command.split(), line
        if command:  # the top level's examples are `demo` and `run --help`
            build_parser().parse_args(words)  # an unknown option exits 2


def _shape(parser: argparse.ArgumentParser) -> list[tuple[object, ...]]:
    """What a parser takes: each action's option strings, destination, default and choices,
    its subcommands' shapes included."""
    shape: list[tuple[object, ...]] = []
    for action in parser._actions:
        shape.append((tuple(action.option_strings), action.dest, action.default, action.nargs))
        if isinstance(action, argparse._SubParsersAction):
            shape += [(name, *_shape(sub)) for name, sub in action.choices.items()]
    return shape


@pytest.mark.parametrize("command", [name for name in COMMANDS if name and " " not in name])
def test_a_parser_built_for_one_command_parses_it_as_the_whole_one(command: str) -> None:
    """main() builds only the command it is given (build_parser(only=...)): that command's
    parser is the whole parser's, and the other commands are still known by name."""
    alone = _commands(build_parser(only=command))
    assert _shape(alone[command]) == _shape(COMMANDS[command])
    assert {name for name in alone if " " not in name} >= {
        name for name in COMMANDS if " " not in name
    }


@pytest.mark.parametrize(
    "words",
    [
        ["hash-index", "--bucket", "b", "--index-db", "i", "--conc", "2"],
        ["hash-index", "--bucket", "b", "--index-db", "i", "--dry", "--verif"],
        ["run", "--limit", "5"],
        ["publish", "worker", "--bur"],
    ],
)
def test_an_abbreviated_option_is_refused(
    words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Only whole option names: an abbreviation would name another option, or none, once an
    option with the same start is added."""
    for parser in (build_parser(), build_parser(only=words[0])):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(words)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "unrecognized arguments" in err, err
