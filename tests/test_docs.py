"""README.md and docs/*.md: relative links resolve, and the README's set-up commands stay true."""

import pathlib
import re
from typing import Dict, List, Set, Tuple

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEMO_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python -m tinkex_persist demo"
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _documents() -> List[pathlib.Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md"] + sorted((ROOT / "docs").glob("*.md"))


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return "\n".join(part for i, part in enumerate(re.split(r"^```.*$", text, flags=re.M)) if i % 2 == 0)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: pathlib.Path) -> Set[str]:
    """Every heading anchor of a Markdown file, duplicates numbered as GitHub numbers them."""
    seen: Dict[str, int] = {}
    found = set()
    for match in re.finditer(r"^#{1,6} +(.+?) *#*$", _prose(path.read_text(encoding="utf-8")), re.M):
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else "%s-%d" % (base, count))
    return found


def broken_links(path: pathlib.Path) -> List[Tuple[str, str]]:
    """The relative links of a Markdown file whose target file or heading anchor does not exist."""
    broken = []
    for target in LINK.findall(_prose(path.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append((target, "no such file"))
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append((target, "no such heading"))
    return broken


def _ci_lines() -> List[str]:
    return (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()


class TestLinks:
    """Every relative link in README.md, CHANGELOG.md and docs/*.md points to a file and heading that exist."""

    def test_every_relative_link_resolves(self):
        """No document links to a missing file or a missing heading anchor."""
        broken = {str(p.relative_to(ROOT)): broken_links(p) for p in _documents()}
        assert {} == {name: links for name, links in broken.items() if links}

    def test_the_checker_sees_a_broken_link(self, tmp_path):
        """The checker reports a link to a missing file and one to a missing heading, and accepts good ones."""
        (tmp_path / "other.md").write_text("# Other\n\n## The `serve`: part\n")
        doc = tmp_path / "doc.md"
        doc.write_text("# Top\n\n[a](other.md#the-serve-part) [b](missing.md) [c](other.md#nope) [d](#top)\n"
                       "[e](https://example.invalid/x)\n```\n[f](inside-code.md)\n```\n")
        assert [("missing.md", "no such file"), ("other.md#nope", "no such heading")] == broken_links(doc)

    def test_readme_links_into_every_docs_page(self):
        """The README links to each page under docs/, so none is unreachable from it."""
        targets = {t.partition("#")[0] for t in LINK.findall((ROOT / "README.md").read_text(encoding="utf-8"))}
        pages = {"docs/" + p.name for p in (ROOT / "docs").glob("*.md")}
        assert set() == pages - targets


class TestSetUpCommands:
    """The README's two set-up commands appear once each, and the test command is what CI runs."""

    def _readme(self) -> str:
        return (ROOT / "README.md").read_text(encoding="utf-8")

    def _test_command(self) -> str:
        commands = re.findall(r"^```sh\n(.*?)\n```", self._readme(), re.M | re.S)
        tests = [c for c in commands if "pytest" in c]
        assert 1 == len(tests), commands
        return tests[0]

    def test_demo_command_appears_once(self):
        """The demo command is in the README exactly once."""
        assert 1 == self._readme().count(DEMO_COMMAND)

    def test_test_command_appears_once(self):
        """The test command is in the README exactly once."""
        assert 1 == self._readme().count(self._test_command())

    def test_test_command_runs_what_ci_runs(self):
        """The README's test command installs the test extra and the cookbook as .ci/run does, then runs the
        pytest line .ci/run marks as the README's."""
        lines = _ci_lines()
        pytest_line = lines[lines.index("# The README's test command (kept identical):") + 1]
        cookbook = [line for line in lines if "tinker-cookbook" in line and "pip install" in line]
        assert 1 == len(cookbook)
        expected = " && ".join([
            "python3 -m venv .venv",
            ".venv/bin/pip install -e '.[test]'",
            cookbook[0].replace(" -q", ""),
            pytest_line,
        ])
        assert expected == self._test_command()
