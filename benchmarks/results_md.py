"""benchmarks/RESULTS.md is written by several scripts, each owning one part between markers
(`<!-- begin:KEY -->` ... `<!-- end:KEY -->`); a script rewrites its part and keeps the rest."""
from __future__ import annotations

from pathlib import Path

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"


def write_part(key: str, text: str, path: Path = RESULTS_MD) -> None:
    """Replace the part `key` of the file with `text` (appended at the end when the file has none)."""
    begin, end = f"<!-- begin:{key} -->", f"<!-- end:{key} -->"
    block = f"{begin}\n{text.strip()}\n{end}\n"
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        new = old.rstrip("\n") + ("\n\n" if old.strip() else "") + block
    path.write_text(new)
