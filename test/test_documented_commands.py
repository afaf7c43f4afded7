"""Every command line the README and docs/ show is one the code accepts, so that a renamed
flag, sub-command, launch argument or parameter breaks the build instead of the user.

Checked, without running anything:

* ``threer-ros ...`` (also ``.venv/bin/threer-ros``, ``python -m threer_ros.cli``) in fenced
  blocks: parsed by the real argparse parser, and every flag spelled exactly as declared
  (argparse would accept an abbreviation of a renamed flag); in a synopsis (``[--opt X]``,
  ``a|b``, ``FILE...``) and in inline code spans of the prose, the sub-command and the flags.
  ``--param NAME:=VALUE`` names a node parameter.
* ``capture_node`` and ``ros2 run threer_ros capture_node``: the ROS arguments, and every
  ``-p NAME:=VALUE`` a parameter of ``config/capture.yaml``.
* ``ros2 launch threer_ros capture.launch.py NAME:=VALUE``: NAME declared in the launch file
  (read from its ``DeclareLaunchArgument`` calls, not restated here).
* YAML blocks with ``ros__parameters``: every key a parameter of ``config/capture.yaml``; an
  inline ``NAME:=VALUE`` of the prose: a launch argument or a parameter.
* ``make TARGET``: a target of the Makefile.
* The examples in each sub-command's ``--help`` (its module docstring), parsed the same way,
  and laid out as written (a swallowed ``\\`` continuation runs two lines into one).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import io
import re
import shlex
from dataclasses import dataclass

import pytest
import yaml

from markdown_blocks import PAGES, REPO, Block, code_blocks
from threer_ros.cli import build_parser
from threer_ros.config import read_parameters

SHELL_LANGS = ("", "bash", "sh", "shell", "console")
SEPARATORS = {"&&", "||", ";", "|"}
#: ROS command-line arguments after ``--ros-args`` that take one value.
ROS_ARGS_WITH_VALUE = {"-p", "--param", "--params-file", "-r", "--remap", "--log-level",
                       "-e", "--enclave"}
#: Parameters every ROS 2 node has, besides those of config/capture.yaml.
ROS_NODE_PARAMETERS = {"use_sim_time"}


@dataclass(frozen=True)
class Command:
    """One command of a page: where it is shown, its words, and whether it is a complete
    command line (in a fenced block) or a synopsis or an inline mention in the prose (maybe
    abridged, with placeholders)."""

    where: str
    words: tuple[str, ...]
    complete: bool

    def __str__(self) -> str:
        return f"{self.where}: {' '.join(self.words)}"


def _segments(words: list[str]) -> list[list[str]]:
    """Split at shell separators; drop leading ``VAR=value`` assignments."""
    out, current = [], []
    for word in words + [";"]:
        if word in SEPARATORS:
            while current and re.fullmatch(r"[A-Za-z_]\w*=\S*", current[0]):
                current.pop(0)
            if current:
                out.append(current)
            current = []
        else:
            current.append(word)
    return out


def _words(line: str) -> tuple[list[str], bool]:
    """The shell words of ``line`` (comments dropped) and whether it is a complete command
    rather than a synopsis; a synopsis loses its brackets. Not shell: no words."""
    synopsis = bool(re.search(r"\[-|\.\.\.|\w\|\w", line))
    if synopsis:
        line = line.replace("[", " ").replace("]", " ")
    try:
        return shlex.split(line, comments=True), not synopsis
    except ValueError:
        return [], False          # not shell (e.g. a diagram line with an apostrophe)


def _fenced_commands(block: Block) -> list[Command]:
    logical = block.text.replace("\\\n", " ").splitlines()
    commands = []
    for offset, line in enumerate(logical):
        words, complete = _words(line)
        commands += [Command(f"{block.where}+{offset + 1}", tuple(seg), complete)
                     for seg in _segments(words)]
    return commands


def _inline_commands() -> list[Command]:
    commands = []
    for page in PAGES:
        text = re.sub(r"^[ \t]*```.*?^[ \t]*```", lambda m: "\n" * m[0].count("\n"),
                      page.read_text(), flags=re.MULTILINE | re.DOTALL)   # lines kept
        for match in re.finditer(r"`([^`]+)`", text):     # a span may wrap over lines
            span = " ".join(match[1].split())
            if not re.match(r"([A-Z_]+=\S+ )*((\S*/)?(threer-ros|capture_node) |python[\d.]* -m "
                            r"threer_ros\.cli |ros2 (launch|run) threer_ros )", span):
                continue
            words, _ = _words(span)
            where = f"{page.relative_to(REPO)}:{text.count(chr(10), 0, match.start()) + 1}"
            commands += [Command(where, tuple(seg), False) for seg in _segments(words)]
    return commands


def _program(words: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """(what runs, its arguments): ``threer-ros``, ``capture_node``, ``launch``, ``make`` or
    something this test does not check."""
    name = words[0].rsplit("/", 1)[-1]
    if name in ("threer-ros", "capture_node", "make"):
        return name, words[1:]
    if re.fullmatch(r"python[\d.]*", name) and words[1:3] == ("-m", "threer_ros.cli"):
        return "threer-ros", words[3:]
    if name == "ros2" and words[1:4] == ("run", "threer_ros", "capture_node"):
        return "capture_node", words[4:]
    if name == "ros2" and words[1:4] == ("launch", "threer_ros", "capture.launch.py"):
        return "launch", words[4:]
    return "", words


ALL_COMMANDS = [c for b in code_blocks() if b.lang in SHELL_LANGS for c in _fenced_commands(b)] \
    + _inline_commands()
CHECKED = [c for c in ALL_COMMANDS if _program(c.words)[0]]


def _parameters() -> set[str]:
    """The capture node's parameters: config/capture.yaml's, and those of every ROS node."""
    return set(read_parameters(REPO / "config" / "capture.yaml")) | ROS_NODE_PARAMETERS


def _launch_arguments() -> set[str]:
    """Names of the ``DeclareLaunchArgument`` calls of launch/capture.launch.py."""
    tree = ast.parse((REPO / "launch" / "capture.launch.py").read_text())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and getattr(node.func, "id", "") == "DeclareLaunchArgument"]
    names = [c.args[0].value if c.args and isinstance(c.args[0], ast.Constant) else None
             for c in calls]
    assert calls and None not in names, ("launch/capture.launch.py: declare each launch "
                                         "argument with a literal name (this test reads them)")
    return set(names)


@functools.cache
def _parser() -> argparse.ArgumentParser:
    """The real ``threer-ros`` parser (built once; it imports every command module)."""
    return build_parser()


def _sub_parser(args: tuple[str, ...]) -> tuple[argparse.ArgumentParser, list[str], list[str]]:
    """The (sub-)parser that ``args`` reach, the sub-command path and the remaining words."""
    parser, path, rest = _parser(), ["threer-ros"], list(args)
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or not rest:
            return parser, path, rest
        choice = rest.pop(0)
        if choice not in subs[0].choices:
            raise AssertionError(f"{' '.join(path)} has no sub-command {choice!r} (it has "
                                 f"{', '.join(subs[0].choices)})")
        parser, path = subs[0].choices[choice], path + [choice]


def _parameter_names(words: tuple[str, ...] | list[str], flags: tuple[str, ...]) -> list[str]:
    """The NAME of each ``FLAG NAME:=VALUE`` among ``words``."""
    return [words[i + 1].split(":=", 1)[0] for i, w in enumerate(words[:-1]) if w in flags]


def check_threer_ros(command: Command) -> None:
    parser, path, rest = _sub_parser(_program(command.words)[1])
    declared = set(parser._option_string_actions)
    for word in rest:
        flag = word.split("=", 1)[0]
        if flag.startswith("-") and flag != "-" and not re.fullmatch(r"-\d.*", flag):
            assert flag in declared, (f"{' '.join(path)} has no option {flag} (it has "
                                      f"{', '.join(sorted(declared))})")
    unknown = set(_parameter_names(rest, ("--param",))) - _parameters()
    assert not unknown, f"--param names no node parameter: {sorted(unknown)}"
    if command.complete:
        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors):
                _parser().parse_args(list(path[1:]) + rest)
        except SystemExit:
            raise AssertionError(f"argparse refuses it: {errors.getvalue().strip()}") from None


def check_capture_node(args: tuple[str, ...]) -> None:
    if not args:
        return
    assert args[0] == "--ros-args", f"capture_node takes ROS arguments only, got {args[0]!r}"
    words = list(args[1:])
    while words:
        word = words.pop(0)
        assert word in ROS_ARGS_WITH_VALUE, f"unknown ROS argument {word!r}"
        assert words, f"{word} needs a value"
        value = words.pop(0)
        if word in ("-p", "--param"):
            name = value.split(":=", 1)[0]
            assert ":=" in value and name in _parameters(), \
                f"-p {value}: no parameter {name!r} in config/capture.yaml"


def check_launch(args: tuple[str, ...]) -> None:
    declared = _launch_arguments()
    for word in (a for a in args if not a.startswith("-")):     # ros2 launch's own options
        assert ":=" in word, f"launch arguments are NAME:=VALUE, got {word!r}"
        name = word.split(":=", 1)[0]
        assert name in declared, (f"capture.launch.py declares no argument {name!r} (it "
                                  f"declares {', '.join(sorted(declared))})")


def check_make(args: tuple[str, ...]) -> None:
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.MULTILINE))
    for target in (a for a in args if not a.startswith("-") and "=" not in a):
        assert target in targets, f"the Makefile has no target {target!r}"


def check(command: Command) -> None:
    """Raise AssertionError naming what about ``command`` the code does not accept."""
    program, args = _program(command.words)
    if program == "threer-ros":
        check_threer_ros(command)
    elif program == "capture_node":
        check_capture_node(args)
    elif program == "launch":
        check_launch(args)
    elif program == "make":
        check_make(args)


@pytest.mark.parametrize("command", CHECKED, ids=str)
def test_documented_command_is_accepted(command):
    try:
        check(command)
    except AssertionError as exc:
        pytest.fail(f"{command}\n  {exc}", pytrace=False)


def test_every_page_shows_checked_commands():
    """The extraction finds what the pages show (a broken pattern would check nothing)."""
    programs = {(c.where.split(":")[0], _program(c.words)[0]) for c in CHECKED}
    assert {("README.md", "threer-ros"), ("README.md", "capture_node"), ("README.md", "launch"),
            ("README.md", "make"), ("docs/bags.md", "threer-ros"),
            ("docs/backends.md", "capture_node")} <= programs
    assert any(not c.complete for c in CHECKED)
    assert {"config", "rig_calibration", "rviz"} <= _launch_arguments()


@pytest.mark.parametrize("block", [b for b in code_blocks() if b.lang in ("yaml", "yml")
                                   and "ros__parameters" in b.text], ids=lambda b: b.where)
def test_documented_parameters_exist(block):
    doc = yaml.safe_load(block.text)
    shown = {name for section in doc.values() if isinstance(section, dict)
             for name in section.get("ros__parameters", {})}
    unknown = shown - _parameters()
    assert not unknown, f"{block.where}: no such parameters in config/capture.yaml: {unknown}"


def _inline_overrides() -> list[tuple[str, str]]:
    """(page:line, NAME) of every inline code span ``NAME:=VALUE`` of the prose."""
    found = []
    for page in PAGES:
        text = page.read_text()
        found += [(f"{page.relative_to(REPO)}:{text.count(chr(10), 0, m.start()) + 1}", m[1])
                  for m in re.finditer(r"`([a-z_]+):=[^`]*`", text)]
    return found


def test_inline_overrides_name_a_launch_argument_or_parameter():
    known = _launch_arguments() | _parameters()
    overrides = _inline_overrides()
    assert overrides
    unknown = [f"{where}: {name}" for where, name in overrides if name not in known]
    assert not unknown, f"neither a launch argument nor a node parameter: {unknown}"


@pytest.mark.parametrize("broken", [
    ("threer-ros replay bags/x --rate 2 --loopy", "has no option --loopy"),
    ("threer-ros replay bags/x --rat 2", "has no option --rat"),
    ("threer-ros weights fetch fast3r", "has no sub-command 'fetch'"),
    ("threer-ros bag info", "argparse refuses it"),
    ("threer-ros latency --param no_such:=1", "names no node parameter"),
    ("capture_node --ros-args -p no_such_parameter:=1", "no parameter 'no_such_parameter'"),
    ("ros2 launch threer_ros capture.launch.py no_such_argument:=1", "declares no argument"),
    ("make no-such-target", "no target"),
])
def test_a_wrong_command_is_caught(broken):
    """What this test would say about a renamed flag, sub-command, parameter or argument."""
    line, message = broken
    with pytest.raises(AssertionError, match=message):
        check(Command("example", tuple(shlex.split(line)), True))


def test_a_synopsis_is_checked_for_its_sub_command_and_flags():
    words, complete = _words("threer-ros replay BAG [--rate R] [--loopy] FILE...")
    assert not complete and "--loopy" in words
    with pytest.raises(AssertionError, match="has no option --loopy"):
        check(Command("synopsis", tuple(words), complete))
    words, complete = _words("threer-ros bag from-synthetic --out bags/x | tee log")
    assert complete


def _help_examples() -> list[tuple[str, str]]:
    """(sub-command path, example line as ``--help`` prints it) of every ``threer-ros ...``
    line in a sub-command's description, a continued line with its continuation."""
    examples, todo = [], [("threer-ros", _parser())]
    while todo:
        path, parser = todo.pop()
        lines = (parser.description or "").splitlines()
        for index, line in enumerate(lines):
            if line.strip().startswith("threer-ros "):
                while line.endswith("\\") and index + 1 < len(lines):
                    index += 1
                    line = f"{line[:-1].rstrip()} {lines[index].strip()}"
                examples.append((path, line.strip()))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{path} {name}", sub) for name, sub in action.choices.items()]
    return examples


def test_help_examples_are_accepted_and_laid_out():
    examples = _help_examples()
    assert any(path == "threer-ros reconstruct" for path, _ in examples)
    for path, line in examples:
        assert not re.search(r"\S {4,}-", line), f"{path} --help: mangled example {line!r}"
        words, complete = _words(line)
        check(Command(f"{path} --help", tuple(words), complete))
