"""Every `kdeval ...` example in README.md and docs/*.md parses with the real command line.

Each command line in a fenced code block is parsed by the Click command Typer builds, as far as the
command line can check without running a model: an unknown option, a wrong choice, a bad number or
a missing argument fails the example it is in, named by file and line. One cheap example runs for
real, end to end. Relative links in those pages must point at files and headings that exist.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

import kdeval.cli

try:  # Typer builds its commands on a Click of its own (typer._click); older Typers on click itself
    from typer import Exit
    from typer._click import ClickException, Context
except ImportError:
    from click import ClickException, Context
    from click.exceptions import Exit

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)")
SEPARATORS = {"&&", "||", ";", "|", "&"}


@dataclass(frozen=True)
class Example:
    page: str  # path relative to the repository root
    line: int  # 1-based line where the command starts
    text: str  # the command as written, continuation lines joined
    args: tuple[str, ...]  # what follows `kdeval` (or `-m kdeval`)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def fenced_lines(text: str):
    """(line number, line) of every line inside a fenced code block, continuations joined."""
    inside, pending, start = False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""


def split_commands(line: str) -> list[list[str]]:
    """Shell words of each command on a line (comments dropped, `a && b` split), as a shell reads them."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in SEPARATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    return [words for words in commands if words]


def kdeval_args(words: list[str]) -> list[str] | None:
    """The arguments kdeval receives from this command, or None when it does not run kdeval."""
    if words[0] == "kdeval":
        return words[1:]
    for i in range(len(words) - 1):  # torchrun ... -m kdeval ..., python -m kdeval ...
        if words[i] == "-m" and words[i + 1] == "kdeval":
            return words[i + 2:]
    return None


def collect_examples() -> list[Example]:
    examples = []
    for page in PAGES:
        for number, line in fenced_lines(page.read_text(encoding="utf-8")):
            for words in split_commands(line):
                args = kdeval_args(words)
                if args is not None:
                    examples.append(Example(str(page.relative_to(ROOT)), number, " ".join(words), tuple(args)))
    return examples


EXAMPLES = collect_examples()
COMMAND = typer.main.get_command(kdeval.cli.app)


class UnknownCommand(ClickException):
    pass


def is_group(command) -> bool:
    return isinstance(getattr(command, "commands", None), dict)


def resolve(args: list[str]):
    """The (sub)command the arguments name, its path (`data shapes`) and the arguments left for it."""
    command, path, rest = COMMAND, ["kdeval"], list(args)
    while is_group(command) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        sub = command.get_command(Context(command, info_name=" ".join(path)), name)
        if sub is None:
            raise UnknownCommand(f"no such command {name!r} in `{' '.join(path)}`")
        command, path = sub, [*path, name]
    return command, path, rest


def parse(args: list[str]) -> None:
    """Parse as kdeval would, without invoking the command: Click raises on anything it rejects."""
    command, path, rest = resolve(args)
    try:
        with command.make_context(" ".join(path), rest, resilient_parsing=False):
            pass
    except Exit as stop:  # --help printed its page
        if stop.exit_code != 0:
            raise


def test_the_pages_hold_examples_of_every_command():
    readme = {" ".join(example.args[:2]) if example.args[0] == "data" else example.args[0]
              for example in EXAMPLES if example.page == "README.md" and example.args}
    commands = {name for name in COMMAND.commands if name != "data"} | {"data shapes"}
    assert commands <= readme, f"README.md has no example of {sorted(commands - readme)}"
    for page in PAGES:
        if page.name != "README.md":  # docs/README.md is the index
            assert any(e.page == str(page.relative_to(ROOT)) for e in EXAMPLES), f"{page} has no kdeval example"


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"{e.where} kdeval {' '.join(e.args)[:60]}" for e in EXAMPLES])
def test_example_parses(example: Example, capsys):
    try:
        parse(list(example.args))
    except ClickException as error:
        pytest.fail(f"{example.where}: `{example.text}` is rejected by the command line: {error.format_message()}", pytrace=False)


@pytest.mark.parametrize("args, message", [
    (["evaluate", "a.json", "--per-clas"], "No such option"),
    (["train", "--arch", "r19"], "r19"),
    (["predict", "model.pt"], "Missing (option|parameter).*output"),
    (["data", "shapes"], "Missing (argument|parameter).*out"),
    (["data", "shaps", "out"], "no such command"),
    (["robustness", "--max-images", "0"], "range|greater than or equal"),
])
def test_the_parser_rejects_what_a_misspelt_example_would_hold(args, message):
    with pytest.raises(ClickException, match=message):
        parse(args)


def test_the_examples_are_read_as_a_shell_reads_them():
    text = "```bash\nkdeval train \\\n    --arch r34   # a comment\ntorchrun --nproc-per-node 2 -m kdeval evaluate a.json\n" \
           "kdeval report && kdeval report x  # y\necho kdeval\n```\n"
    found = [(n, tuple(args)) for n, line in fenced_lines(text) for words in split_commands(line)
             if (args := kdeval_args(words)) is not None]
    assert found == [(2, ("train", "--arch", "r34")), (4, ("evaluate", "a.json")), (5, ("report",)), (5, ("report", "x"))]


def test_the_shapes_example_runs_for_real(tmp_path):
    """`kdeval data shapes` as the docs write it, with fewer and smaller images, into tmp_path."""
    written = next(e for e in EXAMPLES if e.args[:2] == ("data", "shapes"))
    args = list(written.args)
    args[2] = str(tmp_path / "shapes")  # the OUT argument
    for option, value in (("--train", "4"), ("--val", "2"), ("--size", "64")):
        if option in args:
            args[args.index(option) + 1] = value
        else:
            args += [option, value]
    result = CliRunner().invoke(kdeval.cli.app, args)
    assert result.exit_code == 0, f"{written.where}: {result.output}"
    coco = json.loads((tmp_path / "shapes" / "annotations" / "instances_train.json").read_text())
    assert len(coco["images"]) == 4
    assert len(list((tmp_path / "shapes" / "val").glob("*.png"))) == 2


def test_help_runs_and_lists_every_command():
    result = CliRunner().invoke(kdeval.cli.app, ["--help"])
    assert result.exit_code == 0, result.output
    for name in COMMAND.commands:
        assert name in result.output


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"^(```|~~~).*?^(```|~~~)", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    headings = re.findall(r"^#+\s+(.*?)\s*$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_point_at_files_and_headings(page: Path):
    broken = []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path) if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}:{number}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{page.relative_to(ROOT)}:{number}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)
