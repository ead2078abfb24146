"""The repository explains itself: code, tests and docs cite only documents the repository ships.

- No file of the code, the tests, the benchmarks, the configs, the README or docs/ cites a document
  outside the repository (the specification files the project was written from, their sections,
  paths into a shared folder); such facts belong in docs/ (docs/README.md lists the documents).
- Every `docs/<file>.md` a file cites exists, and so does every `#anchor` it names (GitHub's anchor of
  a heading); links between the docs resolve the same way.
- The README stays a front page (at most 220 lines); every link in it and in bench/README.md resolves;
  every section the README used to hold has a home in docs/ (or bench/README.md) under a heading.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
CODE_DIRS = ("core", "rsp", "launch", "eval", "localslurm", "tests", "bench", "experiments", "sweeps")
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


README_MAX_LINES = 220
# Where each section of the README went when it was cut to a front page (README heading -> its home).
MOVED_SECTIONS = {
    "Quickstart (what both commands do)": "docs/launching.md#what-the-quickstart-does",
    "How the project is laid out": "docs/architecture.md#layout",
    "The model": "docs/model.md#using-the-model",
    "Training": "docs/training.md#training-in-short",
    "GPUs": "docs/training.md#gpus-in-short",
    "Launching": "docs/launching.md#launching",
    "Sweeps": "docs/sweeps.md#running-a-sweep",
    "Evaluations and results": "docs/evaluation.md#evaluation-jobs-and-results",
    "Does it learn? (the CPU study)": "docs/evaluation.md#the-cpu-study-on-camouflage-worlds",
    "Data": "docs/data.md#data-in-short",
    "Evaluation: video label propagation": "docs/evaluation.md#running-an-evaluation",
    "Try it without a cluster: a local SLURM cluster": "docs/local-slurm.md#trying-it",
    "Tests, benchmarks, CI (tests)": "docs/architecture.md#tests-and-ci",
    "Tests, benchmarks, CI (benchmarks and their table)": "bench/README.md#results",
    "Environment": "docs/architecture.md#environment",
}


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


def shown(path: Path) -> Path:
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def lines(path: Path):
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        yield f"{shown(path)}:{number}", line


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


def broken_links(page: Path) -> list[str]:
    """Relative Markdown links of a page (README.md, bench/README.md) whose file or heading is missing."""
    broken = []
    for where, line in lines(page):
        for target, anchor in MARKDOWN_LINK.findall(line):
            linked = (page.parent / target).resolve() if target else page
            if not linked.is_file():
                broken.append(f"{where}: link to {target}, which does not exist")
            elif anchor and anchor not in anchors_of(linked):
                broken.append(f"{where}: {shown(linked)} has no heading with the anchor #{anchor}")
    return broken


def test_the_readme_is_a_front_page():
    count = len((REPO / "README.md").read_text().splitlines())
    assert count <= README_MAX_LINES, (
        f"README.md has {count} lines (at most {README_MAX_LINES}); move the detail into the docs/ page it belongs "
        "to (docs/README.md lists them) and link it from the README"
    )


def test_every_link_of_the_readme_and_the_benchmarks_page_resolves():
    broken = broken_links(REPO / "README.md") + broken_links(REPO / "bench" / "README.md")
    assert not broken, "links that do not resolve; fix the link or the heading:\n" + "\n".join(broken)


def test_every_section_moved_out_of_the_readme_has_a_home():
    homeless = []
    for section, home in MOVED_SECTIONS.items():
        path, anchor = home.split("#")
        if not (REPO / path).is_file() or anchor not in anchors_of(REPO / path):
            homeless.append(f"{section!r} -> {home}: no such file or heading")
    assert not homeless, "README sections without a home:\n" + "\n".join(homeless)


def test_the_link_check_catches_what_it_must(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## A heading\n")
    page.write_text("[ok](other.md#a-heading) [gone](missing.md) [bad](other.md#no-heading) [web](https://x.org/a.md)\n")
    broken = broken_links(page)
    assert len(broken) == 2, broken
    assert "link to missing.md, which does not exist" in broken[0]
    assert "other.md has no heading with the anchor #no-heading" in broken[1]
