"""The README and docs/ hold what they promise: a front door within 200 lines whose variant table is the
registry's, the test command CI runs, one committed chart, links that resolve, and no issue numbers."""

import re
import shlex
from pathlib import Path

import pytest

from harness import entry, registry
from tests import test_report_fixtures as fx

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def section(text: str, title: str) -> str:
    """The text of the `## title` section, up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def test_readme_is_at_most_200_lines():
    assert len(README.read_text().splitlines()) <= 200


def test_readme_variant_table_is_the_registrys_built_in_variants_by_family():
    rows = [line for line in section(README.read_text(), "Variants").splitlines()
            if line.startswith("| ") and not line.startswith("| family") and "---" not in line]
    table = {}
    for row in rows:
        family, variants = (cell.strip() for cell in row.strip("|").split("|")[:2])
        table[family] = set(re.findall(r"`([^`]+)`", variants))
    built_in = {}
    for variant in registry.all_variants():
        if variant.module.startswith("variants."):
            built_in.setdefault(variant.family, set()).add(variant.name)
    assert table == built_in


def test_readme_gives_the_test_command_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    command = "nox -s tests"
    assert re.search(rf"^{command}\b", ci, re.M), ".ci/run no longer runs the README's test command"
    commands = section(README.read_text(), "Two commands")
    assert re.search(rf"^{command}\s", commands, re.M) and re.search(r"^nox -s bench\s", commands, re.M)


def test_readme_shows_one_chart_of_a_committed_reference_run():
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", README.read_text())
    assert len(images) == 1
    assert re.fullmatch(r"results/reference/[^/]+/report/charts/[^/]+\.svg", images[0])
    assert (ROOT / images[0]).is_file()


def product_question(text: str) -> tuple[list[str], list[str]]:
    """The tour's `attnbench recommend` command and the lines of its answer shown after it (a text block)."""
    match = re.search(r"```bash\n(attnbench recommend .*?)```\s*```text\n(.*?)```",
                      section(text, "A five-minute tour"), re.S)
    assert match, "the tour shows no `attnbench recommend` command with its answer after it"
    shown = [line for line in match.group(2).splitlines() if line.strip() and line.strip() != "..."]
    return shlex.split(match.group(1).replace("\\\n", " ")), shown


def words(line: str) -> str:
    """A line of the terminal's answer without its table rules: its words, one space apart."""
    return " ".join(re.sub(r"[│┃]", " ", line).split())


@pytest.mark.slow
def test_readme_product_question_shows_what_the_committed_run_answers(monkeypatch, capsys):
    """The answer quoted in the README is what the command prints today on the committed run: a figure
    copied by hand cannot drift from the rows (each quoted line is part of one printed line)."""
    command, shown = product_question(README.read_text())
    monkeypatch.chdir(ROOT)
    code, out, err = fx.run_cli(monkeypatch, capsys, *command[1:], main=entry.main)
    assert code == 0, err
    printed = [f" {words(line)} " for line in out.splitlines()]
    assert len(shown) >= 5
    assert [line for line in shown if not any(f" {words(line)} " in p for p in printed)] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        path = target.split("#", 1)[0]
        if not path or re.match(r"[a-z]+:", path):
            continue  # an anchor in the page, or a URL
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.name} links to missing paths: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_docs_describe_the_project_without_issue_numbers(page):
    assert not re.findall(r"\bissues? \d+", page.read_text(), re.I)
