"""Print a pip constraints file pinning every requirement of pyproject.toml (dependencies and
extras) at its declared lower bound: ``.ci/run`` runs the suite on those versions too.

``--check``: exit 1 unless this interpreter has exactly those versions installed."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_LOWER = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*>=\s*([^,;\s]+)")


def lower_bounds(pyproject: Path) -> dict[str, str]:
    """Requirement name (normalised) -> its ``>=`` version, for every requirement."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    requirements = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    pins: dict[str, str] = {}
    for requirement in requirements:
        match = _LOWER.match(requirement)
        if match is None:
            raise SystemExit(f"ci/lowest.py: {requirement!r} has no '>=' lower bound")
        name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
        version = match.group(2)
        if pins.get(name, version) != version:
            raise SystemExit(f"ci/lowest.py: {name} has two lower bounds: {pins[name]}, {version}")
        pins[name] = version
    return pins


def check(pins: dict[str, str]) -> int:
    """Compare installed distributions with ``pins``; print each, return the exit status."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    wrong = 0
    for name, pinned in sorted(pins.items()):
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "missing"
        ok = installed != "missing" and Version(installed) == Version(pinned)
        wrong += not ok
        print(f"{'ok ' if ok else 'BAD'} {name}: declared >={pinned}, installed {installed}")
    return 1 if wrong else 0


def main() -> int:
    args = sys.argv[1:]
    checking = "--check" in args
    paths = [a for a in args if a != "--check"]
    pins = lower_bounds(Path(paths[0] if paths else "pyproject.toml"))
    if checking:
        return check(pins)
    for name, version in sorted(pins.items()):
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
