"""Judge tasklens by Starlette's and FastAPI's own test suites (``make upstream``).

For the starlette and fastapi installed in the running interpreter's venv: download their
sdists (``pip download --no-binary :all:``) into a cache directory, extract them (minus the
package's own source, so the installed one is what runs), and run each ``tests/`` twice with
the plugin ``ci/tasklens_upstream.py``: plain, then with every app given to ``TestClient``
instrumented (``on_error="stop"``, default options, request spans on). Tests whose outcome
differs are run once more in both modes (the CPU may be shared); the report lists those
failing only instrumented, and the counts per mode. Exit status 1 when one of them is not
in ``ci/upstream_by_design.txt`` (the deviations docs/runtime.md explains).

The suites' extra test dependencies (trio, jinja2, ...) go into an overlay venv in the
cache, on top of this venv's packages (pinned to their installed versions), so the venv
itself is not changed. Usage::

    .venv/bin/python ci/upstream_suites.py [--suite starlette|fastapi] [--cache DIR]
        [--options JSON] [--json FILE] [-- extra pytest args]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
from importlib.metadata import version
from pathlib import Path

CI = Path(__file__).resolve().parent
BY_DESIGN = CI / "upstream_by_design.txt"
SUITES = ("starlette", "fastapi")
#: Test dependencies of each suite not in tasklens's dev extra, for its newest ("new") and
#: lowest supported ("old") line (pinned to this venv's versions of what it has).
_COMMON = ["trio", "jinja2", "python-multipart", "itsdangerous"]
EXTRAS = {
    ("starlette", "new"): [*_COMMON, "httpx2", "blockbuster"],
    ("starlette", "old"): _COMMON,
    ("fastapi", "new"): [
        *_COMMON, "httpx2", "inline-snapshot", "dirty-equals", "sqlmodel", "orjson", "ujson",
        "email-validator", "pyjwt", "pwdlib[argon2]", "passlib[bcrypt]", "flask", "a2wsgi",
        "strawberry-graphql", "pydantic-settings", "typer", "python-slugify", "sentry-sdk",
        "logfire", "fastapi-cli",
        "coverage",  # test_fastapi_cli runs `python -m coverage`
        "pytest-xdist",  # its ``xdist_group`` marker (the suite runs serially here)
    ],
    # FastAPI 0.115's requirements-tests.txt (its snapshots are inline-snapshot 0.13's).
    ("fastapi", "old"): [
        *_COMMON, "inline-snapshot==0.13.0", "dirty-equals", "sqlmodel", "flask<3", "pyjwt",
        "passlib[bcrypt]", "bcrypt==4.0.1", "orjson", "ujson", "email-validator",
        "pydantic-settings",
        "strawberry-graphql",
    ],
}  # fmt: skip
#: The first release of the "new" line.
NEW_LINE = {"starlette": (1, 0), "fastapi": (0, 116)}
MODES = ("plain", "instrumented")


def log(message: str) -> None:
    print(f"[upstream] {message}", file=sys.stderr, flush=True)


def extras_for(suite: str, release: str) -> list[str]:
    major, minor = (int(part) for part in release.split(".")[:2])
    return EXTRAS[suite, "new" if (major, minor) >= NEW_LINE[suite] else "old"]


def overlay(cache: Path, requirements: list[str]) -> Path:
    """A venv whose ``site-packages`` adds this venv's (``.pth``), with ``requirements``
    installed under constraints pinning every package already installed; its python."""
    base = sysconfig.get_paths()["purelib"]
    key = hashlib.sha256("\n".join([sys.prefix, *sorted(requirements)]).encode()).hexdigest()
    root = cache / f"overlay-{key[:12]}"
    python = root / "bin" / "python"
    done = root / ".complete"
    if done.exists():
        return python
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "_tasklens_base.pth").write_text(f"import site; site.addsitedir({base!r})\n")
    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    constraints = root / "constraints.txt"
    constraints.write_text(freeze)
    log(f"installing the suites' test dependencies into {root}")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-c", str(constraints), *requirements],
        check=True,
    )
    done.touch()
    return python


def source_tree(cache: Path, suite: str, release: str) -> Path:
    """The extracted sdist of ``suite==release`` without its package directory."""
    tree = cache / f"{suite}-{release}"
    if (tree / "tests").is_dir():
        return tree
    archive = cache / f"{suite}-{release}.tar.gz"
    if not archive.exists():
        log(f"downloading the {suite} {release} sdist")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
             "-d", str(cache), f"{suite}=={release}"],
            check=True,
        )  # fmt: skip
    with tarfile.open(archive) as tar:
        tar.extractall(cache, filter="data")
    shutil.rmtree(tree / suite)  # the installed package is the one under test
    return tree


def run(
    python: Path,
    tree: Path,
    mode: str,
    report: Path,
    extra: list[str],
    select: Path | None = None,
) -> dict[str, object]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(CI), os.environ.get("PYTHONPATH", "")]).rstrip(":"),
        "TASKLENS_UPSTREAM_MODE": mode,
        "TASKLENS_UPSTREAM_REPORT": str(report),
    }
    env.pop("TASKLENS_UPSTREAM_SELECT", None)
    if select is not None:
        env["TASKLENS_UPSTREAM_SELECT"] = str(select)
    paths = [] if any(not arg.startswith("-") for arg in extra) else ["tests"]
    command = [str(python), "-m", "pytest", *paths, "-p", "tasklens_upstream",
               "-p", "no:cacheprovider", "-q", "--timeout=120", *extra]  # fmt: skip
    started = time.monotonic()
    log(f"{tree.name} {mode}{' (rerun)' if select else ''}: {' '.join(command[1:])}")
    with open(report.with_suffix(".log"), "w") as out:
        done = subprocess.run(command, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode not in (0, 1):  # 2: interrupted, 3: internal error, 4: usage error
        sys.exit(f"pytest exited {done.returncode}: see {report.with_suffix('.log')}")
    data: dict[str, object] = json.loads(report.read_text())
    data["seconds"] = round(time.monotonic() - started, 1)
    return data


def count(outcomes: dict[str, str]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for outcome in outcomes.values():
        totals[outcome] = totals.get(outcome, 0) + 1
    return totals


def by_design(suite: str, path: Path = BY_DESIGN) -> tuple[str, ...]:
    """The node id prefixes of ``suite``'s tests that fail only instrumented by design."""
    prefixes = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, prefix = line.partition(" ")
        if name not in SUITES or not prefix.strip():
            sys.exit(f"{path}:{number}: expected '<{'|'.join(SUITES)}> <node id prefix>'")
        if name == suite:
            prefixes.append(prefix.strip())
    return tuple(prefixes)


def judge(cache: Path, suite: str, extra: list[str]) -> dict[str, object]:
    release = version(suite)
    tree = source_tree(cache, suite, release)
    python = overlay(cache, extras_for(suite, release))
    results = {mode: run(python, tree, mode, cache / f"{suite}-{release}-{mode}.json", extra)
               for mode in MODES}  # fmt: skip
    plain: dict[str, str] = results["plain"]["outcomes"]  # type: ignore[assignment]
    inst: dict[str, str] = results["instrumented"]["outcomes"]  # type: ignore[assignment]
    bad = {"failed", "error"}
    differ = sorted(n for n in plain.keys() | inst.keys() if plain.get(n) != inst.get(n))
    confirmed: dict[str, dict[str, str]] = {}
    if differ:
        select = cache / f"{suite}-{release}-differ.txt"
        select.write_text("\n".join(differ) + "\n")
        again = {mode: run(python, tree, mode, cache / f"{suite}-{release}-{mode}-rerun.json",
                           extra, select)["outcomes"] for mode in MODES}  # fmt: skip
        for node in differ:
            pair = {mode: again[mode].get(node, "missing") for mode in MODES}  # type: ignore[attr-defined]
            if (pair["plain"] in bad) != (pair["instrumented"] in bad):
                confirmed[node] = pair
    only_instrumented = sorted(n for n, p in confirmed.items() if p["instrumented"] in bad)
    only_plain = sorted(n for n, p in confirmed.items() if p["plain"] in bad)
    designed = by_design(suite)
    return {
        "suite": suite,
        "version": release,
        "python": sys.version.split()[0],
        "plain": count(plain),
        "instrumented": count(inst),
        "seconds": {mode: results[mode]["seconds"] for mode in MODES},
        "apps": results["instrumented"]["stats"],
        "tests_with_an_instrumented_app": len(results["instrumented"]["instrumented"]),  # type: ignore[arg-type]
        "refused": results["instrumented"]["refused"],
        "failing_only_instrumented": only_instrumented,
        "by_design": [n for n in only_instrumented if n.startswith(designed)],
        "new": [n for n in only_instrumented if not n.startswith(designed)],
        "failing_only_plain": only_plain,
        "flaky": sorted(set(differ) - set(confirmed)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=SUITES, action="append")
    parser.add_argument("--cache", type=Path, default=CI.parent / ".upstream")
    parser.add_argument(
        "--options", help="more instrument() options, JSON: '{\"request_spans\": false}'"
    )
    parser.add_argument("--json", type=Path, help="write the summary here too")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args()
    if args.options:
        json.loads(args.options)  # fails here, naming the JSON error, not in every test
        os.environ["TASKLENS_UPSTREAM_OPTIONS"] = args.options
    cache: Path = args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    summaries = [judge(cache, suite, args.pytest_args) for suite in args.suite or SUITES]
    for s in summaries:
        print(f"\n{s['suite']} {s['version']} (python {s['python']}), seconds {s['seconds']}")
        print(f"  plain:        {s['plain']}")
        print(f"  instrumented: {s['instrumented']}")
        print(f"  apps: {s['apps']}; tests with an instrumented app: "
              f"{s['tests_with_an_instrumented_app']}")  # fmt: skip
        print(f"  failing_only_instrumented: {len(s['failing_only_instrumented'])} "  # type: ignore[arg-type]
              f"({len(s['by_design'])} by design, {BY_DESIGN.name})")  # type: ignore[arg-type]  # fmt: skip
        for key in ("new", "failing_only_plain", "flaky"):
            nodes: list[str] = s[key]  # type: ignore[assignment]
            print(f"  {key}: {len(nodes)}")
            for node in nodes:
                print(f"    {node}")
    if args.json:
        args.json.write_text(json.dumps(summaries, indent=1))
    return 1 if any(s["new"] for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
