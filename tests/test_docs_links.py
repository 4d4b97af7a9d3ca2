"""Every relative link in the project's Markdown (README.md, docs/, the READMEs of the packages)
names a file that exists and, with `#anchor`, a heading that file has (GitHub's heading slugs).
Links inside fenced code blocks and to http(s)/mailto addresses are not checked."""
import re
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Folders that hold no project documentation (hidden ones neither): run outputs, generated data,
# test fixtures, build trees.
SKIPPED_FOLDERS = {".git", "generated", "runs", "results", "fixtures", "build", "node_modules"}
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
FENCE = "```"


def markdown_files():
    """The Markdown files of the project, repository-relative, sorted."""
    files = []
    for path in REPO_ROOT.rglob("*.md"):
        relative = path.relative_to(REPO_ROOT)
        folders = relative.parts[:-1]
        if not SKIPPED_FOLDERS.intersection(folders) and not any(part.startswith(".") for part in folders):
            files.append(relative)
    return sorted(files)


def prose_lines(text):
    """(line number, line) outside fenced code blocks."""
    in_code = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith(FENCE):
            in_code = not in_code
        elif not in_code:
            yield number, line


def heading_slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path):
    """The anchors of a Markdown file's headings (a repeated slug gets -1, -2, ... as on GitHub)."""
    seen = {}
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if match:
            slug = heading_slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            if count:
                seen[f"{slug}-{count}"] = 1
    return set(seen)


def broken_links(relative):
    """['file:line: target (why)'] for the links of one Markdown file that do not resolve."""
    source = REPO_ROOT / relative
    broken = []
    for number, line in prose_lines(source.read_text(encoding="utf-8")):
        for target in LINK.findall(line):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            file_part, _, anchor = target.partition("#")
            resolved = (source.parent / file_part).resolve() if file_part else source
            where = f"{relative}:{number}: {target}"
            if not resolved.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{where} (no heading with anchor #{anchor} in {resolved.name})")
    return broken


def test_the_readme_and_docs_are_checked():
    files = {path.as_posix() for path in markdown_files()}
    assert {"README.md", "docs/troubleshooting.md", "docs/caffe/pycaffe.md", "sec/caffe/README.md"} <= files


@pytest.mark.parametrize("relative", markdown_files(), ids=lambda path: path.as_posix())
def test_relative_links_resolve(relative):
    assert broken_links(relative) == []


def test_the_checker_finds_a_missing_file_and_a_missing_anchor(tmp_path, monkeypatch):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title here\n\n## Second `one`\n")
    (tmp_path / "README.md").write_text("[ok](docs/a.md#second-one) [top](docs/a.md#title-here)\n"
                                        "[gone](docs/b.md) [bad](docs/a.md#third)\n"
                                        "```\n[in code](nowhere.md)\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO_ROOT", tmp_path)
    assert broken_links(Path("README.md")) == [
        "README.md:2: docs/b.md (no such file)",
        "README.md:2: docs/a.md#third (no heading with anchor #third in a.md)"]
