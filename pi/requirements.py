"""Print the requirements of the project's extras, one per line, for pip inside the arm64 root.

The project itself is not installed there (the repository is mounted read-only and put on PYTHONPATH),
so only its dependencies are: ``python pi/requirements.py pyproject.toml edge fleet``.
Self-references such as ``edgecls[edge]`` are followed.
"""

from __future__ import annotations

import re
import sys

import tomllib


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    name, optional = project["name"], project.get("optional-dependencies", {})
    out, todo, seen = list(project.get("dependencies", [])), list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in optional[extra]:
            own = re.fullmatch(rf"{re.escape(name)}\[([^\]]+)\]", req.split(";")[0].strip())
            if own:
                todo.extend(e.strip() for e in own.group(1).split(","))
            elif req not in out:
                out.append(req)
    return out


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1], sys.argv[2:])))
