"""The README stays a front page: short, with the two commands that set up a machine, and links that resolve."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_the_readme_is_at_most_180_lines():
    assert len(README.splitlines()) <= 180, "move reference material to docs/ (the README is the front page)"


def test_the_readme_gives_the_run_and_test_commands():
    assert "make run" in README and "make test-all" in README


def test_every_relative_link_of_the_readme_resolves():
    targets = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README)  # [text](path) and [text](path#anchor), not URLs
    assert targets
    missing = [t for t in targets if not (REPO / t).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"
