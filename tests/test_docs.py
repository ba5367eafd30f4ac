"""Docs that cannot rot: every `ray-router` command shown in README.md and docs/*.md parses against the real
command line, and every relative Markdown link points at a file of the repository.

Commands are taken from fenced code blocks labelled bash, sh, shell or console (and unlabelled blocks with a
line starting with `ray-router`), and from inline code spans that start with `ray-router `. A command may
continue over lines ending in a backslash; a leading `$ ` is stripped and comments after `#` are ignored. A
`python jobs/<name>.py ...` invocation (e.g. after `ray job submit ... --`) is checked as the `ray-router`
command that entrypoint runs. Inline spans with a placeholder in angle brackets (`ray-router <command>
--help`) are skipped; fenced blocks are never skipped.

Each command is walked down the group / subcommand chain with click (`make_context(...,
resilient_parsing=True)`, `resolve_command`), so no command runs and no value is converted or required. As
resilient parsing also swallows unknown options, each level's arguments are first run through the command's
own option parser with a strict context: an unknown command, an unknown option, an option without its value
or an extra argument fails the test, naming the file and the line. No Ray, no models.
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from ray_router.cli import main
from ray_router.errors import UserError

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_LABELS = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
SEPARATORS = {"&&", "||", ";", "|"}
JOB_COMMAND = re.compile(r"""main\(\[\s*["']([\w-]+)["']""")


@dataclass(frozen=True)
class Invocation:
    """One `ray-router` command found in a doc: its file, 1-based line, the text shown and its arguments."""

    path: Path
    line: int
    text: str
    argv: list[str]

    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


# -- reading Markdown ---------------------------------------------------------------------------------------

def fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(info label, 1-based line of the first content line, content lines) of every fenced code block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, label = opening.group(1), opening.group(2).lower()
        start, i = i + 1, i + 1
        while i < len(lines) and not re.match(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$", lines[i]):
            i += 1
        blocks.append((label, start + 1, lines[start:i]))
        i += 1
    return blocks


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(1-based line, text) of every line outside fenced code blocks."""
    inside = set()
    for _, first, content in fenced_blocks(text):
        inside.update(range(first - 1, first + len(content) + 1))  # the fences themselves too
    return [(n + 1, line) for n, line in enumerate(text.splitlines()) if n not in inside]


def without_inline_code(line: str) -> str:
    return INLINE_CODE.sub("", line)


# -- finding commands ---------------------------------------------------------------------------------------

def job_commands() -> dict[str, str]:
    """`jobs/<name>.py` -> the ray-router command it runs (each entrypoint is `main(["<command>", *argv])`)."""
    commands = {}
    for job in sorted((REPO / "jobs").glob("*.py")):
        found = JOB_COMMAND.search(job.read_text())
        if found:
            commands[f"jobs/{job.name}"] = found.group(1)
    return commands


def logical_lines(content: list[str], first: int) -> list[tuple[int, str]]:
    """Shell lines with backslash continuations joined and a leading `$ ` stripped, each with the 1-based line
    it starts on."""
    joined, current, start = [], "", None
    for offset, raw in enumerate(content):
        line = raw.strip()
        if not current and line.startswith("$ "):
            line = line[2:]
        if start is None:
            start = first + offset
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        joined.append((start, current + line))
        current, start = "", None
    if current:
        joined.append((start, current))
    return joined


def invocations_in(tokens: list[str], jobs: dict[str, str]) -> list[list[str]]:
    """The argument lists of every ray-router invocation in a shell line's tokens: a command in command
    position (after `NAME=value` assignments) of each `&&` / `;` / `|` segment, or a `python jobs/<name>.py`
    anywhere in a segment (as after `ray job submit ... --`)."""
    found, segment = [], []
    for token in [*tokens, ";"]:
        if token not in SEPARATORS:
            segment.append(token)
            continue
        words = segment
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words = words[1:]
        if words and Path(words[0]).name == "ray-router":
            found.append(words[1:])
        else:
            for i, word in enumerate(words[:-1]):
                if re.fullmatch(r"(\S*/)?python3?", word) and words[i + 1] in jobs:
                    found.append([jobs[words[i + 1]], *words[i + 2:]])
                    break
        segment = []
    return found


def doc_invocations(path: Path) -> tuple[list[Invocation], list[str]]:
    """Every ray-router invocation shown in `path`, and the problems met while reading them (a line shlex
    cannot split)."""
    text, jobs = path.read_text(), job_commands()
    found, problems = [], []
    for label, first, content in fenced_blocks(text):
        unlabelled_cli = label == "" and any(line.strip().removeprefix("$ ").startswith("ray-router")
                                             for line in content)
        if label not in SHELL_LABELS and not unlabelled_cli:
            continue
        for line_no, line in logical_lines(content, first):
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError as err:
                problems.append(f"{path.relative_to(REPO)}:{line_no}: cannot split {line!r} ({err})")
                continue
            found += [Invocation(path, line_no, line, argv) for argv in invocations_in(tokens, jobs)]
    for line_no, line in prose_lines(text):
        for match in INLINE_CODE.finditer(line):
            code = match.group(2).strip()
            if not code.startswith("ray-router ") or re.search(r"<[^>]+>", code):
                continue  # not a command, or a placeholder such as `ray-router <command> --help`
            found.append(Invocation(path, line_no, code, shlex.split(code)[1:]))
    return found, problems


# -- checking a command against the real CLI ----------------------------------------------------------------

def parse_problem(argv: list[str]) -> str | None:
    """None when `ray-router ARGV` parses down to its (sub)command; else what is wrong with it."""
    command: click.Command = main
    name, parent, args, chain = "ray-router", None, list(argv), ["ray-router"]
    while True:
        try:
            strict = command.context_class(command, info_name=name, parent=parent, **command.context_settings)
            _, leftover, _ = command.make_parser(strict).parse_args(list(args))
            ctx = command.make_context(name, list(args), parent=parent, resilient_parsing=True)
        except click.UsageError as err:
            return f"`{' '.join(chain)}`: {err.format_message()}"
        if not isinstance(command, click.Group):
            return f"`{' '.join(chain)}` got unexpected extra arguments {leftover}" if leftover else None
        if not leftover:
            return None  # a group on its own (it prints its help)
        try:
            sub_name, sub, rest = command.resolve_command(ctx, leftover)
        except (click.UsageError, UserError) as err:  # a group may refuse an unknown subcommand itself
            return f"`{' '.join(chain)}`: {err}"
        if sub is None:
            return (f"`{' '.join(chain)}` has no command {leftover[0]!r} "
                    f"(it has: {', '.join(sorted(command.commands))})")
        command, name, parent, args = sub, sub_name, ctx, rest
        chain.append(sub_name)


# -- links --------------------------------------------------------------------------------------------------

def heading_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (lowercase, punctuation dropped, spaces to
    hyphens, repeats numbered -1, -2, ...)."""
    anchors: set[str] = set()
    for _, line in prose_lines(path.read_text()):
        heading = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1)).lower()
        slug = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN").replace(" ", "-")
        candidate, n = slug, 0
        while candidate in anchors:
            n += 1
            candidate = f"{slug}-{n}"
        anchors.add(candidate)
    return anchors


def broken_links(path: Path) -> list[str]:
    """`file:line: target (why)` for every relative link of `path` that points at nothing in the repository."""
    problems = []
    for line_no, line in prose_lines(path.read_text()):
        prose = without_inline_code(line)
        targets = [m.group(1) for m in LINK.finditer(prose)]
        reference = REFERENCE_LINK.match(prose)
        if reference:
            targets.append(reference.group(1))
        for target in targets:
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("//"):
                continue  # https://..., mailto:...: not a file of the repository
            file_part, _, anchor = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(REPO)}:{line_no}: {target}"
            if not resolved.is_relative_to(REPO):
                problems.append(f"{where} (outside the repository)")
            elif not resolved.exists():
                problems.append(f"{where} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved):
                problems.append(f"{where} (no heading with that anchor in {resolved.relative_to(REPO)})")
    return problems


# -- the tests ----------------------------------------------------------------------------------------------

def doc_id(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_the_docs_exist():
    assert (REPO / "docs" / "README.md") in DOCS and (REPO / "docs" / "security.md") in DOCS
    for path in DOCS:
        assert path.read_text().startswith("# "), f"{doc_id(path)} does not start with an H1"


@pytest.mark.parametrize("path", DOCS, ids=doc_id)
def test_every_ray_router_command_in_the_docs_parses(path):
    found, problems = doc_invocations(path)
    for invocation in found:
        problem = parse_problem(invocation.argv)
        if problem:
            problems.append(f"{invocation.where()}: {problem}\n    {invocation.text}")
    assert not problems, "commands in the docs that the CLI does not accept:\n" + "\n".join(problems)


def test_the_docs_show_the_commands():
    """The extraction finds the commands (a broken extractor would pass every check above)."""
    found = [inv for path in DOCS for inv in doc_invocations(path)[0]]
    shown = {tuple(inv.argv[:2]) if inv.argv[:1] == ["data"] else tuple(inv.argv[:1]) for inv in found}
    for command in [("data", "import"), ("data", "describe"), ("extract",), ("scan-layers",), ("train",),
                    ("evaluate",), ("route",), ("serve",)]:
        assert command in shown, f"no doc shows `ray-router {' '.join(command)}`"
    assert any(inv.path.name == "README.md" and inv.path.parent == REPO for inv in found)
    assert len(found) >= 30, len(found)


@pytest.mark.parametrize("path", DOCS, ids=doc_id)
def test_every_relative_link_points_at_a_file(path):
    problems = broken_links(path)
    assert not problems, "broken links:\n" + "\n".join(problems)


@pytest.mark.parametrize("argv, complaint", [
    (["extract", "--data", "d", "--no-such-option"], "No such option"),
    (["no-such-command"], "has no command 'no-such-command'"),
    (["data", "import", "nope", "x"], "'nope'"),
    (["route", "--bundle"], "requires an argument"),
    (["data", "describe", "a.parquet", "b.parquet"], "unexpected extra arguments"),
])
def test_the_check_rejects_what_the_cli_rejects(argv, complaint):
    problem = parse_problem(argv)
    assert problem is not None and complaint in problem, problem


def test_the_check_accepts_what_the_cli_accepts():
    for argv in (["data", "import", "table", "t.csv", "--correct", "a=b", "--out", "o.parquet"],
                 ["route", "--bundle", "b", "--input", "q.parquet", "--out", "o", "--json"],
                 ["serve", "no/such/config.yaml", "--port", "8001"], ["--version"], ["data"]):
        assert parse_problem(argv) is None, argv


def test_the_reader_joins_continuations_and_drops_prompts_and_comments():
    text = ("# T\n\n```console\n$ ray-router extract --data d \\\n    --layers 8 --out f   # a comment\n```\n\n"
            "```bash\nRAY_AUTH_MODE=disabled ray job submit --working-dir . -- \\\n"
            "    python jobs/train.py --data d --features f --out b && echo done\n```\n")
    blocks = fenced_blocks(text)
    assert [(label, first) for label, first, _ in blocks] == [("console", 4), ("bash", 9)]
    lines = logical_lines(blocks[0][2], blocks[0][1])
    assert lines == [(4, "ray-router extract --data d  --layers 8 --out f   # a comment")]
    argv = invocations_in(shlex.split(lines[0][1], comments=True), job_commands())
    assert argv == [["extract", "--data", "d", "--layers", "8", "--out", "f"]]
    (_, job_line), = logical_lines(blocks[1][2], blocks[1][1])
    assert invocations_in(shlex.split(job_line, comments=True), job_commands()) == [
        ["train", "--data", "d", "--features", "f", "--out", "b"]]
