"""No link in the repository leads outside it: every Markdown link resolves to a tracked file (and
heading), no link goes to a web site except a local one, and nothing cites the shared folder that
exists only beside the authors' checkout, outside the repository."""

from __future__ import annotations

import re
import subprocess
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[2]
# Addresses a reader of the docs may open on their own machine; everything else is off-site.
LOCAL_HOSTS = ("localhost", "127.0.0.1")
OUTSIDE = "../" + "shared"  # split so this file does not trip its own check

_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
# [text](target "title") and ![alt](target); the text may hold one level of brackets or code.
_INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)
_AUTOLINK = re.compile(r"<([a-zA-Z][a-zA-Z0-9+.-]*:[^\s<>]*)>")
_BARE_URL = re.compile(r"(?<![\w(<\"'=])(?:https?|ftp)://[^\s<>)\]|]+", re.I)
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ANCHOR = re.compile(r"""<a\s[^>]*(?:name|id)\s*=\s*["']([^"']+)["']""", re.I)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def tracked(root: Path, pattern: str | None = None) -> list[Path]:
    """The files git tracks under `root` (all, or those matching a `git ls-files` pathspec)."""
    args = ["git", "-C", str(root), "ls-files", "-z"]
    if pattern is not None:
        args += ["--", pattern]
    out = subprocess.run(args, check=True, capture_output=True).stdout
    return [root / name for name in out.decode().split("\0") if name]


def without_fences(text: str) -> str:
    """The Markdown with its fenced code blocks blanked (lines kept)."""
    kept: list[str] = []
    fence: str | None = None
    for line in text.split("\n"):
        opening = _FENCE.match(line)
        if fence is None and opening:
            fence = opening.group(1)
            kept.append("")
        elif fence is not None:
            if line.strip().startswith(fence):
                fence = None
            kept.append("")
        else:
            kept.append(line)
    return "\n".join(kept)


def prose(text: str) -> str:
    """The Markdown without fenced code blocks, code spans and HTML comments (lines kept)."""
    joined = _HTML_COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), without_fences(text))
    return _CODE_SPAN.sub(lambda m: " " * len(m.group(0)), joined)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text lower-cased, punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").strip().lower()
    kept = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a Markdown file offers: its headings' slugs (repeats numbered) and HTML anchors."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in without_fences(text).split("\n"):
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    found.update(a.lower() for a in _HTML_ANCHOR.findall(text))
    return found


def link_targets(text: str) -> Iterable[tuple[int, str]]:
    """(line number, target) of every inline link, image, reference definition and autolink."""
    body = prose(text)
    for pattern in (_INLINE, _DEFINITION, _AUTOLINK):
        for match in pattern.finditer(body):
            yield body.count("\n", 0, match.start()) + 1, match.group(1)
    for match in _BARE_URL.finditer(body):
        line = body.count("\n", 0, match.start()) + 1
        yield line, match.group(0)


def is_local_url(target: str) -> bool:
    match = re.match(r"^https?://([^/:?#]+)", target, re.I)
    return match is not None and match.group(1).lower() in LOCAL_HOSTS


def problems_in(root: Path, md: Path) -> list[str]:
    """What is wrong with the links of one Markdown file, one sentence each (empty: nothing)."""
    root = root.resolve()
    where = md.relative_to(root)
    found: list[str] = []
    seen_bare: set[tuple[int, str]] = set()
    for line, target in link_targets(md.read_text(encoding="utf-8")):
        if (line, target) in seen_bare:
            continue
        seen_bare.add((line, target))
        if not target:
            found.append(f"{where}:{line}: a link with no target")
            continue
        if _SCHEME.match(target):
            if not is_local_url(target):
                found.append(f"{where}:{line}: {target} leaves the repository")
            continue
        path_part, _, anchor = target.partition("#")
        if path_part.startswith("/"):
            dest = (root / unquote(path_part).lstrip("/")).resolve()
        elif path_part:
            dest = (md.parent / unquote(path_part)).resolve()
        else:
            dest = md.resolve()
        if not dest.is_relative_to(root):
            found.append(f"{where}:{line}: {target} points outside the repository")
            continue
        if not dest.exists():
            found.append(f"{where}:{line}: {target}: no such file in the repository")
            continue
        if anchor and dest.suffix == ".md" and unquote(anchor).lower() not in anchors(dest.read_text()):
            found.append(f"{where}:{line}: {target}: {dest.name} has no heading with anchor #{anchor}")
    return found


def outside_mentions(paths: Iterable[Path], root: Path) -> list[str]:
    """Tracked text files that cite the shared folder beside the checkout, which a clone lacks."""
    found = []
    for path in paths:
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        for number, line in enumerate(data.decode("utf-8", "replace").split("\n"), 1):
            if OUTSIDE in line:
                found.append(f"{path.relative_to(root)}:{number}: cites {OUTSIDE}")
    return found


# ------------------------------------------------------------------ the repository itself
def test_every_markdown_link_stays_in_the_repository() -> None:
    """Every link of every tracked Markdown file names an existing file (and heading) of the repository."""
    files = tracked(REPO, "*.md")
    assert files, "git ls-files found no Markdown files"
    found = [problem for md in files if md.exists() for problem in problems_in(REPO, md)]
    assert not found, "links that leave the repository or lead nowhere:\n" + "\n".join(found)


def test_nothing_cites_the_shared_folder() -> None:
    """No tracked file refers to the shared folder, which exists only beside the authors' checkout."""
    found = outside_mentions(tracked(REPO), REPO)
    assert not found, "\n".join(found)


# ------------------------------------------------------------------ the checker can fail
@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "# A page\n\n## Delivery guarantee\n\n## MQTT → Kafka (`ingest`)\n"
    )
    (tmp_path / "tool.py").write_text("print('hello')\n")
    return tmp_path


def check(repo: Path, text: str) -> list[str]:
    readme = repo / "README.md"
    readme.write_text(text)
    return problems_in(repo, readme)


def test_good_links_pass(repo: Path) -> None:
    """Relative links to files, headings (GitHub's slugs) and localhost pass."""
    text = (
        "[page](docs/page.md) [guarantee](docs/page.md#delivery-guarantee)"
        " [bridge](docs/page.md#mqtt--kafka-ingest) [tool](tool.py) ![x](docs/page.md)"
        " [console](http://localhost:8470/) [self](#top)\n\n# Top\n"
        "`[not a link](https://example.org)`\n\n```\n[nor this](https://example.org)\n```\n"
    )
    assert check(repo, text) == []


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[web](https://example.org/page)", "leaves the repository"),
        ("[ref]\n\n[ref]: https://example.org/", "leaves the repository"),
        ("see <https://example.org>", "leaves the repository"),
        ("see https://example.org/bare for more", "leaves the repository"),
        ("[mail](mailto:someone@example.org)", "leaves the repository"),
        ("[gone](docs/missing.md)", "no such file"),
        ("[up](../outside.md)", "points outside the repository"),
        ("[anchor](docs/page.md#no-such-heading)", "has no heading with anchor #no-such-heading"),
        ("[own](#nowhere)\n\n# Somewhere\n", "has no heading with anchor #nowhere"),
    ],
)
def test_a_planted_bad_link_is_found(repo: Path, text: str, says: str) -> None:
    """A link off-site, to a missing file or heading, or out of the repository is reported."""
    found = check(repo, text)
    assert len(found) == 1, found
    assert says in found[0]


def test_a_citation_of_the_shared_folder_is_found(repo: Path) -> None:
    """A file that cites the shared folder is reported with its line."""
    (repo / "code.py").write_text(f"x = 1\n# see {OUTSIDE}/CLINICAL_RULES.md\n")
    assert outside_mentions([repo / "code.py", repo / "tool.py"], repo) == [f"code.py:2: cites {OUTSIDE}"]


def test_github_slugs() -> None:
    """Headings become GitHub's anchors: lower case, punctuation dropped, each space a hyphen."""
    assert slug("Archive (`streams.archive`)") == "archive-streamsarchive"
    assert slug("MQTT -> Kafka bridge (`ingest`)") == "mqtt---kafka-bridge-ingest"
    assert slug("Weight gain counts measurement days (HF-1, HF-2)") == (
        "weight-gain-counts-measurement-days-hf-1-hf-2"
    )
    assert anchors("# Same\n\n## Same\n") == {"same", "same-1"}
