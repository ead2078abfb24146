"""A dataset split's listing: the names of its videos, one per line, restricted to the sequences an
evaluation asks for. Shared by every task's reader."""

from __future__ import annotations

from pathlib import Path


def read_listing(listing: Path, hint: str) -> list[str]:
    """The names in a split's listing file, one per line (blank lines skipped). A missing file
    raises FileNotFoundError naming it, followed by `hint` (how to get a valid root)."""
    if not listing.is_file():
        raise FileNotFoundError(f"{listing} is missing: {hint}")
    return [line.strip() for line in listing.read_text().splitlines() if line.strip()]


def select_sequences(listed: list[str], wanted: list[str] | tuple[str, ...], listing: object) -> list[str]:
    """`listed` (a split's videos, in order) restricted to `wanted` (EvalConfig.sequences; empty: all).
    Raises naming `listing` (the file or files that list the split) for unknown names and empty splits."""
    repeated = sorted({name for name in listed if listed.count(name) > 1})
    if repeated:
        # A video listed twice would be evaluated twice and weigh twice in the dataset's mean.
        raise ValueError(f"{listing} lists {', '.join(repeated)} more than once; list each video once")
    if wanted:
        unknown = sorted(set(wanted) - set(listed))
        if unknown:
            raise ValueError(f"sequences {', '.join(unknown)} are not in {listing}; valid: {', '.join(listed)}")
        listed = [name for name in listed if name in set(wanted)]
    if not listed:
        raise ValueError(f"{listing} lists no videos; list one name per line")
    return listed
