"""The repository explains itself: code, tests and docs cite only documents the repository ships.

- No file of the code, the tests, the benchmarks, the configs, the README or docs/ cites a document
  outside the repository (the specification files the project was written from, their sections,
  paths into a shared folder); such facts belong in docs/ (docs/README.md lists the documents).
- Every `docs/<file>.md` a file cites exists, and so does every `#anchor` it names (GitHub's anchor of
  a heading); links between the docs resolve the same way.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
CODE_DIRS = ("rsp", "launch", "eval", "tests", "bench", "experiments", "sweeps")
TEXT_SUFFIXES = {".py", ".sh", ".in", ".yaml", ".yml", ".toml", ".md", ".txt", ".cfg"}

SECTION_SIGN = "\u00a7"
OUTSIDE_NAMES = r"(?:rsp|eval|launch|environment|slurm-local)"  # the specification files' names
# Written without the literal phrases they match, so that this file passes its own check.
OUTSIDE = re.compile(
    rf"spec\s{SECTION_SIGN}|{SECTION_SIGN}\d"  # a section of a specification file
    rf"|\bspec\s{OUTSIDE_NAMES}\b"  # a specification file named after the word spec
    r"|slurm-local\sspec|\bthe\sspec\b"  # the cluster's specification, or "the" specification
    rf"|(?<![\w/.-]){OUTSIDE_NAMES}\.md\b"  # a specification file by name (docs/ has none of these names)
    r"|\.\./share[d]\b|/work/share[d]\b|\bshare[d]/spe[c]"  # paths into the shared folder
)
DOCS_CITATION = re.compile(r"\bdocs/([\w-]+\.md)(?:#([\w-]+))?")
MARKDOWN_LINK = re.compile(r"\]\((?!https?:)([\w./-]*\.md)?(?:#([\w-]+))?\)")


def scanned_files() -> list[Path]:
    files = [p for d in CODE_DIRS for p in (REPO / d).rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES]
    files += [p for p in REPO.iterdir() if p.is_file() and p.suffix in TEXT_SUFFIXES]
    files += list(DOCS.glob("*.md"))
    return sorted(p for p in files if "__pycache__" not in p.parts)


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces -> hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors_of(doc: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)  # no headings inside code blocks
    return {github_anchor(h) for h in re.findall(r"^#{1,6} (.+?)\s*#*$", text, flags=re.M)}


def lines(path: Path):
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        yield f"{path.relative_to(REPO)}:{number}", line


def test_nothing_cites_a_document_outside_the_repository():
    found = [f"{where}: {line.strip()}" for path in scanned_files() for where, line in lines(path) if OUTSIDE.search(line)]
    assert not found, (
        f"{len(found)} line(s) cite documents the repository does not ship; move the fact into docs/ "
        "(docs/README.md lists the documents) and cite it as docs/<file>.md#<anchor>, or cite the paper:\n"
        + "\n".join(found[:40])
    )


def test_every_cited_docs_file_and_anchor_exists():
    known = {doc.name: anchors_of(doc) for doc in DOCS.glob("*.md")}
    broken = []
    for path in scanned_files():
        for where, line in lines(path):
            for name, anchor in DOCS_CITATION.findall(line):
                if name not in known:
                    broken.append(f"{where}: docs/{name} does not exist (docs/ has {', '.join(sorted(known))})")
                elif anchor and anchor not in known[name]:
                    broken.append(f"{where}: docs/{name} has no heading with the anchor #{anchor}")
    assert not broken, "citations of docs/ that do not resolve; fix the citation or the heading:\n" + "\n".join(broken)


def test_links_between_docs_resolve():
    known = {doc.name: anchors_of(doc) for doc in DOCS.glob("*.md")}
    broken = []
    for doc in sorted(DOCS.glob("*.md")):
        for where, line in lines(doc):
            for target, anchor in MARKDOWN_LINK.findall(line):
                name = Path(target).name if target else doc.name
                if target and not (DOCS / target).is_file():
                    broken.append(f"{where}: link to {target}, which is not in docs/")
                elif anchor and anchor not in known.get(name, set()):
                    broken.append(f"{where}: {name} has no heading with the anchor #{anchor}")
    assert not broken, "links in docs/ that do not resolve:\n" + "\n".join(broken)


def test_the_docs_index_lists_every_document_and_the_readme_points_to_it():
    index = (DOCS / "README.md").read_text()
    missing = [doc.name for doc in DOCS.glob("*.md") if doc.name != "README.md" and f"({doc.name})" not in index]
    assert not missing, f"docs/README.md has no line for {', '.join(missing)}; add one line per document"
    assert "docs/" in (REPO / "README.md").read_text(), "README.md should point readers to docs/"


def test_the_outside_citation_check_catches_what_it_must():
    # The forms this project's code used to cite its specification files, built so that this file
    # itself contains none of them; and citations that must stay legal.
    sign = SECTION_SIGN
    caught = [
        f"(spec {sign}7)",
        f"spec {sign}2-{sign}6",
        "(spec " + "eval" + f".md {sign}1, {sign}4)",
        "(spec " + "launch" + ".md #11)",
        "the slurm-local" + " spec, pitfall 6",
        "the choices the" + " spec leaves open",
        "see ../" + "shared/" + "spec/rsp" + ".md",
        "/work/" + "shared/STYLE.md",
        "random access is cheaper (environment" + ".md)",
    ]
    legal = [
        "(docs/data.md#frame-pair-sampling)",
        "docs/evaluation.md#jf-metric",
        "spec = MODELS[name]",
        "ModelSpec(16, 384, 12, 6)",
        "register_model(name, spec)",
    ]
    assert [text for text in caught if not OUTSIDE.search(text)] == []
    assert [text for text in legal if OUTSIDE.search(text)] == []
    assert github_anchor("J&F metric") == "jf-metric"
    assert github_anchor("Targets (norm_pix)") == "targets-norm_pix"
