"""The user's guide: the README stays a guide (short, both set-up commands), and every relative link of the README and
the docs leads somewhere."""
import re
from pathlib import Path

import pytest
from helpers import REPO

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
DOCUMENTS = [REPO / "README.md", REPO / "DEVELOPERS.md", REPO / "benchmarks" / "README.md",
             *sorted((REPO / "docs").rglob("*.md"))]


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text))


def anchors(path: Path) -> set:
    return {github_anchor(line.lstrip("#")) for line in path.read_text().splitlines() if line.startswith("#")}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO)))
def test_every_relative_link_resolves(document):
    broken = []
    for target in LINK.findall(document.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        resolved = (document.parent / path).resolve() if path else document
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(target)
    assert not broken, f"{document.name}: links that lead nowhere: {broken}"


def test_github_anchors_follow_githubs_rule():
    assert github_anchor(" README command 1") == "readme-command-1"
    assert github_anchor(" The paper's ablation, 3 seeds (`compare`)") == "the-papers-ablation-3-seeds-compare"


def test_the_readme_is_a_guide_with_both_set_up_commands():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv .venv && ")]
    assert len(commands) == 2
    assert commands[0].endswith("--cfg-path projects/glscl/demo/pretrain_shapes.yaml")
    assert commands[1].endswith("-m pytest -q tests")
    assert (REPO / "LICENSE").read_text().startswith("BSD 3-Clause License")
    assert "Global and Local Semantic Completion Learning" in (REPO / "CITATION.cff").read_text()
