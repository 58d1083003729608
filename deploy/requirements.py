"""Prints the requirements of the base install plus the named extras, one a line, from pyproject.toml.

    python deploy/requirements.py server,train > requirements.txt

The container build installs these in a layer of their own, before the code is copied, so a code change does not
reinstall torch. An extra that names `vitrine-search[...]` is expanded into that extra's requirements.
"""
from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

SELF = re.compile(r"^vitrine-search\[(?P<extras>[^\]]+)\]$")


def requirements(project: dict, extras: list[str]) -> list[str]:
    optional = project.get("optional-dependencies", {})
    out = list(project.get("dependencies", []))
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop(0).strip()
        if not extra or extra in seen:
            continue
        if extra not in optional:
            raise ValueError(f"extra {extra!r} is not in pyproject.toml; known extras are {', '.join(sorted(optional))}.")
        seen.add(extra)
        for req in optional[extra]:
            found = SELF.match(req.replace(" ", ""))
            if found:
                todo.extend(found["extras"].split(","))
            elif req not in out:
                out.append(req)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2):
        print("usage: requirements.py EXTRA[,EXTRA...] [PYPROJECT]", file=sys.stderr)
        return 2
    pyproject = Path(argv[1] if len(argv) == 2 else "pyproject.toml")
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    try:
        print("\n".join(requirements(project, argv[0].split(","))))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
