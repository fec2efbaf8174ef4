"""Every reference to a document points at a file (and a section) the repository contains.

Scans every file git tracks (code, messages, tests, READMEs, C sources): no machine paths, no
documents from outside the repository, every ``docs/*.md`` named exists, and every
"docs/validation.md, rule N" / "SN", "docs/abi.md §X" and "docs/<page>.md, <section>"
citation names a rule or heading that page really has.
"""

from __future__ import annotations

import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEXT_SUFFIXES = {".py", ".c", ".h", ".md", ".sh", ".toml", ".json", ".txt", ".cfg", ".ini", ""}
# Spelled in pieces so this file does not match itself.
FORBIDDEN = ["SEMANTICS" + ".md", "ABI" + ".md", "ANCHORS" + ".md", "/work" + "/", "../" + "shared",
             "shared" + "/spec", "shared" + "/seed"]


def tracked_files():
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        out = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts]
    files = []
    for rel in out:
        p = ROOT / rel
        if p.is_file() and p.suffix in TEXT_SUFFIXES and "build" not in p.parts:
            try:
                files.append((rel, p.read_text(encoding="utf-8")))
            except UnicodeDecodeError:
                continue
    return files


FILES = tracked_files()


def headings(page: str) -> list:
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    return [m.group(1).strip() for m in re.finditer(r"^#{1,4} +(.+)$", text, re.M)]


def validation_rules() -> set:
    text = (ROOT / "docs" / "validation.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| (\d+|S\d) \|", text, re.M))


def test_the_scan_sees_the_repository():
    names = {rel for rel, _ in FILES}
    assert "aclnn_fag/rules/table.py" in names and "native_stubs/src/opapi_stub.c" in names
    assert "README.md" in names


@pytest.mark.parametrize("needle", FORBIDDEN)
def test_no_reference_outside_the_repository(needle):
    hits = [f"{rel}:{text[:text.index(needle)].count(chr(10)) + 1}"
            for rel, text in FILES if needle in text]
    assert not hits, f"{needle!r} is cited in {hits}"


def test_no_old_row_citations():
    """The validation rules are cited as 'docs/validation.md, rule N', not '(row N)'."""
    pat = re.compile(r"\(row \d+\)|" + "§6" + " row")
    hits = [f"{rel}:{m.group(0)}" for rel, text in FILES for m in pat.finditer(text)]
    assert not hits, hits


def test_every_named_doc_exists():
    pat = re.compile(r"\bdocs/([A-Za-z0-9_\-]+\.md)")
    missing = sorted({f"{rel}: docs/{m.group(1)}" for rel, text in FILES for m in pat.finditer(text)
                      if not (ROOT / "docs" / m.group(1)).is_file()})
    assert not missing, missing


def test_validation_citations_name_real_rules():
    rules = validation_rules()
    assert {str(n) for n in range(1, 31)} <= rules and {f"S{n}" for n in range(1, 10)} <= rules
    pat = re.compile(r"docs/validation\.md,\s+(?:rule\s+(\d+)|(S\d))")
    seen = set()
    for rel, text in FILES:
        for m in pat.finditer(text):
            key = m.group(1) or m.group(2)
            seen.add(key)
            assert key in rules, f"{rel}: docs/validation.md has no rule {key}"
    assert len(seen) > 20          # the messages really cite rules


def test_abi_citations_name_real_sections():
    heads = headings("abi.md")
    numbers = {re.match(r"(\d+[a-z]?)\.", h).group(1) for h in heads if re.match(r"\d+[a-z]?\.", h)}
    pat = re.compile(r"docs/abi\.md\s+(?:§|section\s+)(\d+[a-z]?)")
    for rel, text in FILES:
        for m in pat.finditer(text):
            assert m.group(1) in numbers, f"{rel}: docs/abi.md has no section {m.group(1)}"


@pytest.mark.parametrize("page", ["semantics.md", "sparse_modes.md", "usage.md", "npu.md", "cli.md",
                                  "parity.md", "testing.md"])
def test_section_citations_name_real_headings(page):
    heads = headings(page)
    pat = re.compile(r"docs/" + re.escape(page) + r",\s+[\"']?([A-Z][A-Za-z0-9\-\s]+)")
    checked = 0
    for rel, text in FILES:
        for m in pat.finditer(text):
            cited = " ".join(m.group(1).split())
            assert any(cited.startswith(h) or h.startswith(cited) for h in heads), \
                f"{rel}: docs/{page} has no section {cited!r} (headings: {heads})"
            checked += 1
    assert page != "semantics.md" or checked > 5


def test_readme_citations_name_real_readme_sections():
    """A README section cited by its quoted heading (README, then a comma or a parenthesis)
    names a heading the README has."""
    heads = [m.group(1).strip() for m in re.finditer(r"^#{1,4} +(.+)$",
                                                     (ROOT / "README.md").read_text(), re.M)]
    pat = re.compile(r"README(?:\.md)?(?:,\s+|\s+\()\"([^\"]+)\"")
    for rel, text in FILES:
        for m in pat.finditer(text):
            assert any(h.startswith(m.group(1)) for h in heads), \
                f"{rel}: README.md has no section {m.group(1)!r}"
