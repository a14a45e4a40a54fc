#!/usr/bin/env python3
"""One vocabulary for a disk's identity (issue 14, docs/architecture.md "Identity"): re-runnable rename.

    python tools/rename_disk_identity.py [--check] [ROOT]

The vocabulary:

- ``vm_disk_id`` (int): the catalog's stable id of a disk, the ``vm_disks`` row. ``RecordedDisk.id`` was a
  second spelling of it; it was renamed ``vm_disk_id`` separately, with mypy finding the accesses.
- ``disk_id`` (str): the catalog's name of the disk within its VM, ``disk-<device key>`` (``vm_disks.disk_id``).
- ``device_key`` (int): vSphere's device key. The agent contract's models called it ``disk_key``; in Python it
  is ``device_key`` now, and the JSON keeps ``disk_key`` through a pydantic alias: the wire
  (docs/agent-contract.md) is unchanged.

What this script changes, and why each rule is safe:

1. ``agent/contract.py``: the ``disk_key`` fields of ``Target`` and ``DiskProgress`` become
   ``device_key: int = Field(alias="disk_key", ...)`` with ``validate_by_name=True, serialize_by_alias=True``
   so Python constructs with ``device_key=`` and every dump
   (FastAPI's, the hub client's ``model_dump``) still writes ``disk_key``.
2. Every Python identifier token ``disk_key`` in the tree becomes ``device_key`` (tokenize: strings, comments
   and longer names such as ``boot_disk_key`` are untouched). Every such identifier is a contract field access,
   keyword or a local holding a device key (checked when this script was written: no scope has both names).
3. A ``"disk_key"`` string that is a key of a ``model_copy(update={...})`` dict becomes ``"device_key"``:
   ``update`` takes field names, not aliases, so the old key would silently set nothing.

JSON payloads written as dict literals with the ``"disk_key"`` key (tests that post raw requests, the CBT event
payload) are wire formats and stay. Changed files are passed to ``ruff format`` (the longer name can push a
line past the limit). Idempotent: a second run changes nothing. ``--check`` exits 1 when a run
would change something (for CI after a merge).
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

OLD, NEW = "disk_key", "device_key"
CONTRACT = Path("agent/contract.py")
WIRE_MODELS = ("Target", "DiskProgress")  # a nested model dumps by its own config
FIELD = f'    {NEW}: int = Field(alias="{OLD}", description="The vSphere device key (JSON: {OLD})")'
ALIAS_CONFIG = "validate_by_name=True, serialize_by_alias=True"
UPDATE_KEY = re.compile(r"""(model_copy\(\s*update\s*=\s*\{[^}]*?)(["'])disk_key\2""")


def _rename_in_fstring(text: str) -> str:
    """``disk_key`` in the replacement fields of an f-string literal (Python < 3.12 tokenizes an f-string as one
    STRING token); the literal text around them is left alone."""
    out, depth, i = [], 0, 0
    while i < len(text):
        char = text[i]
        if depth == 0 and text.startswith(("{{", "}}"), i):
            out.append(text[i : i + 2])
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}" and depth:
            depth -= 1
        if depth and re.match(rf"{OLD}\b", text[i:]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            out.append(NEW)
            i += len(OLD)
            continue
        out.append(char)
        i += 1
    return "".join(out)


def rename_tokens(source: str) -> str:
    """``disk_key`` NAME tokens (and names in f-string fields) to ``device_key``; everything else byte for byte."""
    lines = source.splitlines(keepends=True)
    edits: list[tuple[int, int, int, str]] = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.NAME and token.string == OLD:
            edits.append((*token.start, len(OLD), NEW))
        elif token.type == tokenize.STRING and token.start[0] == token.end[0] and OLD in token.string:
            prefix = token.string[: len(token.string) - len(token.string.lstrip("rRbBuUfF"))]
            if "f" in prefix.lower():
                edits.append((*token.start, len(token.string), _rename_in_fstring(token.string)))
    for row, col, length, text in reversed(edits):
        line = lines[row - 1]
        lines[row - 1] = line[:col] + text + line[col + length :]
    return "".join(lines)


def rename_update_keys(source: str) -> str:
    previous = None
    while previous != source:
        previous, source = source, UPDATE_KEY.sub(lambda m: f"{m[1]}{m[2]}{NEW}{m[2]}", source)
    return source


def _class_span(lines: list[str], name: str) -> tuple[int, int]:
    start = next(i for i, line in enumerate(lines) if line.startswith(f"class {name}("))
    end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace()), len(lines))
    return start, end


def alias_contract(source: str) -> str:
    """The contract's field and model config (rule 1); a contract already aliased is returned unchanged."""
    lines = source.split("\n")
    for name in WIRE_MODELS:
        start, end = _class_span(lines, name)
        body = lines[start:end]
        for i, line in enumerate(body):
            if line in (f"    {OLD}: int", f"    {NEW}: int"):
                body[i] = FIELD
        config = next((i for i, line in enumerate(body) if line.strip().startswith("model_config = ConfigDict(")), None)
        if config is None:
            docstring = body[1].strip()
            one_line = docstring.startswith('"""') and docstring.endswith('"""') and len(docstring) > 6
            if docstring.startswith('"""') and not one_line:
                raise SystemExit(f"{CONTRACT}: class {name} has a docstring this script does not expect")
            insert = 2 if one_line else 1
            block = [f"    model_config = ConfigDict({ALIAS_CONFIG})", ""]
            body[insert:insert] = ["", *block] if one_line else block
        elif ALIAS_CONFIG not in body[config]:
            body[config] = body[config].replace("ConfigDict(", f"ConfigDict({ALIAS_CONFIG}, ", 1).replace(", )", ")")
        lines[start:end] = body
    return "\n".join(lines)


def python_files(root: Path) -> list[Path]:
    listed = subprocess.run(
        ["git", "-C", str(root), "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
        check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    return [root / name for name in listed if not name.startswith("tools/")]


def main(argv: list[str]) -> int:
    check = "--check" in argv
    roots = [a for a in argv if not a.startswith("--")]
    root = Path(roots[0] if roots else Path(__file__).resolve().parents[1])
    changed = []
    for path in python_files(root):
        if not path.exists():
            continue
        before = path.read_text()
        after = rename_update_keys(rename_tokens(before))
        if path.resolve() == (root / CONTRACT).resolve():
            after = alias_contract(after)
        if after != before:
            compile(after, str(path), "exec")  # a rename that breaks the syntax stops here, before writing
            changed.append(path.relative_to(root))
            if not check:
                path.write_text(after)
    for name in changed:
        print(("would change " if check else "changed ") + str(name))
    if changed and not check:
        # a longer name can push a line past the limit: the project's formatter wraps it as it would by hand
        ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
        subprocess.run([ruff, "format", "--quiet", *(str(root / name) for name in changed)], check=True)
    return 1 if check and changed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
