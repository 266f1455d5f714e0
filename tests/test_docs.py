"""The documentation stays true to the code it describes.

- README.md is a front door of at most 250 lines;
- every ``docs/<page>.md`` the code or configs name exists, and every section id they or the
  pages cite (``method.md §B2``, ``decision C6``) is a heading of docs/method.md;
- every local link of README.md and docs/*.md points at an existing file (and, into a Markdown
  page, at an existing heading);
- every module of README's command table exists and defines the function the table names, and
  so does every ``module.py``: ``function`` pair of docs/architecture.md;
- every page of docs/ can be reached from README.md by following links;
- README and docs speak in dated facts, not in the project's work history ("this round").
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
METHOD = DOCS / "method.md"

README_MAX_LINES = 250
SKIPPED_DIRS = {"logs", "data", "artifacts", "outputs", "multirun", "wandb", "build", "dist"}
"""Run outputs and caches under the repository root that hold no source."""

SECTION_CITATION = re.compile(r"§\s*([A-Z]\d+(?:\s*,\s*[A-Z]\d+)*)")
DECISION_CITATION = re.compile(r"\bdecisions?\s+(C\d+)")
CODE_REFERENCE = re.compile(r"`([\w/]+\.py)`: `([\w.]+)`")
"""``path.py``: ``name`` in a page, e.g. ``exports/aif_pipeline.py``: ``AIFPipeline.run``."""
DOC_PATH = re.compile(r"\bdocs/([\w./-]+?\.md)\b")
MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
WORK_HISTORY = re.compile(
    r"\b(this|that|an earlier|earlier|the last|a later) round\b|\bissue \d+", re.I
)


def source_files() -> Iterator[Path]:
    """Every ``*.py`` and ``*.yaml`` of the repository (hidden folders and run outputs left out)."""
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [
            d
            for d in subfolders
            if not d.startswith(".") and d not in SKIPPED_DIRS and not d.endswith(".egg-info")
        ]
        for name in files:
            if name.endswith((".py", ".yaml")):
                yield Path(folder) / name


def markdown_pages() -> list[Path]:
    """README.md and every page under docs/."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def heading_slugs(page: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown page (``## A2 AIF preprocessing`` ->
    ``a2-aif-preprocessing``; repeated headings get ``-1``, ``-2``, ...)."""
    slugs: set[str] = set()
    in_code = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else HEADING.match(line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(2).strip().lower()).replace(" ", "-")
            slug, n = text, 0
            while slug in slugs:
                n += 1
                slug = f"{text}-{n}"
            slugs.add(slug)
    return slugs


def method_section_ids() -> set[str]:
    """Section ids that head a section of docs/method.md: ``## A5 Loss and training`` -> A5."""
    ids = set()
    for line in METHOD.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^#{1,4}\s+([A-Z]\d+)\b", line)
        if match:
            ids.add(match.group(1))
    return ids


def cited_ids() -> dict[str, list[str]]:
    """Every section id the code, the configs and the pages cite, with where (``file:line``)."""
    cited: dict[str, list[str]] = {}
    for path in [*source_files(), *markdown_pages()]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            found = [
                part.strip()
                for match in SECTION_CITATION.finditer(line)
                for part in match.group(1).split(",")
            ]
            found += DECISION_CITATION.findall(line)
            for section in found:
                cited.setdefault(section, []).append(f"{path.relative_to(ROOT)}:{number}")
    return cited


def test_readme_is_a_short_front_door() -> None:
    n_lines = len(README.read_text(encoding="utf-8").splitlines())
    assert n_lines <= README_MAX_LINES, (
        f"README.md has {n_lines} lines (at most {README_MAX_LINES}): move reference material "
        "to docs/"
    )


def test_every_section_cited_is_a_heading_of_method_md() -> None:
    cited = cited_ids()
    assert {"A2", "B2"} <= cited.keys(), "the code cites docs/method.md sections"
    missing = {section: where[:3] for section, where in cited.items()}
    for section in method_section_ids():
        missing.pop(section, None)
    assert not missing, f"sections cited with no heading in docs/method.md: {missing}"


def test_every_docs_page_the_code_names_exists() -> None:
    missing = []
    for path in source_files():
        for page in DOC_PATH.findall(path.read_text(encoding="utf-8")):
            if not (DOCS / page).is_file():
                missing.append(f"{path.relative_to(ROOT)} names docs/{page}")
    assert not missing, missing


@pytest.mark.parametrize("page", markdown_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_local_link_points_at_an_existing_file_and_heading(page: Path) -> None:
    broken = []
    for target in MARKDOWN_LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / file_part).resolve() if file_part else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in heading_slugs(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def local_links(page: Path) -> set[Path]:
    """The local files a Markdown page links to (anchors dropped)."""
    links = set()
    for target in MARKDOWN_LINK.findall(page.read_text(encoding="utf-8")):
        file_part = target.partition("#")[0]
        if file_part and not re.match(r"^[a-z][a-z0-9+.-]*:", target):
            links.add((page.parent / file_part).resolve())
    return links


def test_every_docs_page_is_reachable_from_the_readme() -> None:
    reached, frontier = {README.resolve()}, [README.resolve()]
    while frontier:
        for linked in local_links(frontier.pop()):
            if linked.suffix == ".md" and linked.is_file() and linked not in reached:
                reached.add(linked)
                frontier.append(linked)
    orphans = [str(p.relative_to(ROOT)) for p in markdown_pages() if p.resolve() not in reached]
    assert not orphans, f"pages no link leads to from README.md: {orphans}"


def command_table() -> list[tuple[str, str, str]]:
    """Rows (command, module path, function) of README's "command | module | function" table."""
    rows, in_table = [], False
    for line in README.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        if cells[:3] == ["command", "module", "function"]:
            in_table = True
        elif in_table and line.startswith("|") and not set(line) <= set("|- "):
            rows.append((cells[0], cells[1], cells[2]))
        elif in_table and not line.startswith("|"):
            break
    return rows


def defines(module: Path, name: str) -> bool:
    """Whether ``module`` defines ``name`` (``Class.method``: the class and the method)."""
    text = module.read_text(encoding="utf-8")
    return all(
        re.search(rf"^\s*(async\s+)?(def|class)\s+{re.escape(part)}\b", text, re.M)
        for part in name.split(".")
    )


def test_readme_command_table_leads_to_real_modules_and_functions() -> None:
    rows = command_table()
    assert len(rows) >= 10, "README has a 'command | module | function' table of its commands"
    wrong = []
    for command, module, function in rows:
        if not (ROOT / module).is_file():
            wrong.append(f"{command}: no module {module}")
        elif not defines(ROOT / module, function):
            wrong.append(f"{command}: {module} defines no {function}")
    assert not wrong, wrong


def test_architecture_names_real_modules_and_functions() -> None:
    references = CODE_REFERENCE.findall((DOCS / "architecture.md").read_text(encoding="utf-8"))
    assert len(references) >= 10, "docs/architecture.md leads every command to its functions"
    wrong = [
        f"{module}: {name}"
        for module, name in references
        if not (ROOT / module).is_file() or not defines(ROOT / module, name)
    ]
    assert not wrong, f"docs/architecture.md names code that does not exist: {wrong}"


@pytest.mark.parametrize("page", markdown_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_state_dated_facts_not_work_history(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    found = [match.group(0) for match in WORK_HISTORY.finditer(text)]
    assert not found, f"{page.relative_to(ROOT)} speaks of the work's history: {found}"
