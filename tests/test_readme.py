"""The README cannot document what the CLI does not take: every ``cropmap ...`` it shows names a registered
command, and every ``--option`` written after it is an option of that command."""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

from cropmap.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands(group, prefix: str = "") -> dict[str, object]:
    found = {}
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            found |= _commands(cmd, prefix + name + " ")
        else:
            found[prefix + name] = cmd
    return found


def readme_problems(text: str) -> list[str]:
    """One line per ``cropmap`` invocation of ``text`` that names no command or an option it lacks."""
    commands = _commands(typer.main.get_command(app))
    options = {name: {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} for name, cmd in commands.items()}
    problems = []
    spans = re.findall(r"`([^`\n]*)`", text) + re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    for span in spans:
        for line in span.splitlines():
            for call in re.findall(r"(?:^|[\s;&|(])cropmap ([a-z][^#;&|)]*)", line):
                words = call.split()
                name = next((" ".join(words[:n]) for n in (2, 1) if " ".join(words[:n]) in commands), None)
                if name is None:
                    if words and words[0] not in ("with", "maps"):  # prose ("cropmap maps the crops ...")
                        problems.append(f"`cropmap {call.strip()}`: no such command")
                    continue
                for opt in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", call):
                    if opt not in options[name]:
                        problems.append(f"`cropmap {name}`: no option {opt}")
    return problems


def test_every_cropmap_call_in_the_readme_is_a_command_with_its_options():
    assert readme_problems(README.read_text()) == []


def test_the_check_fails_on_a_drifted_readme():
    text = README.read_text()
    assert "`cropmap predict --no-ood`" in text
    drifted = text.replace("`cropmap predict --no-ood`", "`cropmap predict --no-ood-score`") + "\n`cropmap mapp ARG`\n"
    assert readme_problems(drifted) == ["`cropmap predict`: no option --no-ood-score", "`cropmap mapp ARG`: no such command"]
