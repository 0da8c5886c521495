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


DOCS = README.parent / "docs"
RESULTS = DOCS / "results"
# (document, the sentence quoting a result with its figures as groups, the results file, its row, the columns)
QUOTES = [
    (README, r"OA (0\.\d+) on the target\s+\(macro-F1 (0\.\d+), ([\d ]+) pixels\)", "transfer.csv",
     {"augment": "all", "seed": 0}, ("oa", "macro_f1", "pixels")),
    (DOCS / "demo.md", r"OA \*\*(0\.\d+)\*\* on the target \(macro-F1 (0\.\d+), ([\d ]+) pixels", "transfer.csv",
     {"augment": "all", "seed": 0}, ("oa", "macro_f1", "pixels")),
    (DOCS / "demo.md", r"east-half OA of the default settings is \*\*(0\.\d+)\*\*", "demo-oa.csv",
     {"setting": "all"}, ("east_oa",)),
]


def quote_problems(text: str, pattern: str, table, row: dict, columns: tuple[str, ...]) -> list[str]:
    """The figures ``pattern`` finds in ``text`` against ``row`` of the results ``table`` (a DataFrame), at the
    precision they are written with."""
    found = re.search(pattern, text)
    if found is None:
        return [f"no quote matching {pattern!r}"]
    match = table
    for key, value in row.items():
        match = match[match[key] == value]
    if len(match) != 1:
        return [f"{len(match)} rows of the results match {row}"]
    problems = []
    for column, quoted in zip(columns, found.groups()):
        figure = quoted.replace(" ", "")
        decimals = len(figure.split(".")[1]) if "." in figure else 0
        if round(float(match[column].iloc[0]), decimals) != float(figure):
            problems.append(f"{column} quoted {quoted}, the results say {match[column].iloc[0]}")
    return problems


def test_results_quoted_in_the_docs_are_the_result_files():
    """A figure the README or docs/demo.md quotes is the one in the file its run wrote (docs/results/)."""
    import pandas as pd

    for doc, pattern, name, row, columns in QUOTES:
        assert quote_problems(doc.read_text(), pattern, pd.read_csv(RESULTS / name), row, columns) == [], (doc, name)


def test_the_quote_check_fails_on_a_figure_that_drifted():
    import pandas as pd

    doc, pattern, name, row, columns = QUOTES[0]
    found = re.search(pattern, doc.read_text())
    drifted = doc.read_text().replace(found.group(0), found.group(0).replace(found.group(1), "0.839"))
    table = pd.read_csv(RESULTS / name)
    truth = table[(table.augment == "all") & (table.seed == 0)].oa.iloc[0]
    assert quote_problems(drifted, pattern, table, row, columns) == [f"oa quoted 0.839, the results say {truth}"]
