"""tasklens as pip delivers it: the sdist and the wheel built from a clean tree, installed into
a fresh venv with nothing but their dependencies, used from outside the repository.

Set ``PIP_CONSTRAINT`` (the lowest-versions run does) and the fresh venv gets those versions.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.metrics import scrape
from tests.support.net import free_port
from tests.support.polling import wait_for
from tests.support.server import REPO, ServerProcess, clean_env

PROMTOOL = shutil.which("promtool")


def _run(*args: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = clean_env()
    env.pop("PYTHONPATH")
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist and wheel, the wheel built from the sdist (``python -m build``), of a copy of
    the tracked files only (what a clean clone has, with uncommitted edits)."""
    root = tmp_path_factory.mktemp("pip-user")
    tree = root / "clone"
    tracked = _run("git", "ls-files", "-z", cwd=REPO).stdout.split("\0")
    for relative in filter(None, tracked):
        source = REPO / relative
        target = tree / relative
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    _run(sys.executable, "-m", "build", "--outdir", root / "dist", tree, cwd=root)
    return root / "dist"


@pytest.fixture(scope="module")
def venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the wheel and its dependencies, nothing else."""
    root = tmp_path_factory.mktemp("venv")
    _run(sys.executable, "-m", "venv", root / "venv", cwd=root)
    python = root / "venv" / "bin" / "python"
    (wheel,) = dist.glob("tasklens-*.whl")
    _run(python, "-m", "pip", "install", "-q", wheel, cwd=root)
    yield root / "venv"


def test_wheel_installs_one_top_level_name_and_ships_the_artefacts(dist: Path) -> None:
    (wheel,) = dist.glob("tasklens-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"tasklens"}
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["tasklens"]
    for shipped in (
        "tasklens/py.typed",
        "tasklens/runtime/runner.py",
        "tasklens/telemetry/contract.py",
        "tasklens/gunicorn_conf.py",
        "tasklens/data/dashboards/overview.json",
        "tasklens/data/dashboards/task.json",
        "tasklens/data/prometheus/tasklens-alerts.yml",
    ):
        assert shipped in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_sdist_carries_tests_license_and_generator(dist: Path) -> None:
    (sdist,) = dist.glob("tasklens-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    for needed in (
        "LICENSE",
        "Makefile",
        "tests/runtime/test_core_scheduling.py",
        "tests/support/server.py",
        "dashboards/__main__.py",
        "runtime/runner.py",
        "ci/lowest.py",
    ):
        assert needed in names


def test_export_writes_dashboards_rules_and_gunicorn_config(venv: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _run(venv / "bin" / "tasklens", "export", "--out", out, cwd=tmp_path)
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == [
        "dashboards/overview.json",
        "dashboards/task.json",
        "gunicorn.conf.py",
        "k8s/prometheusrule.yaml",
        "prometheus/tasklens-alerts.yml",
    ]
    assert result.stdout.count("wrote ") == 5
    for name in ("overview", "task"):
        exported = (out / "dashboards" / f"{name}.json").read_text()
        assert exported == (REPO / "tasklens" / "data" / "dashboards" / f"{name}.json").read_text()
    rules = yaml.safe_load((out / "prometheus" / "tasklens-alerts.yml").read_text())
    resource = yaml.safe_load((out / "k8s" / "prometheusrule.yaml").read_text())
    assert resource["kind"] == "PrometheusRule" and resource["spec"] == rules
    assert PROMTOOL is not None, "promtool missing: make test installs Debian's prometheus"
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(out / "prometheus" / "tasklens-alerts.yml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert re.search(r"SUCCESS: \d+ rules found", checked.stdout)


def test_demo_without_uvicorn_names_the_extra(venv: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(venv / "bin" / "tasklens"), "demo"], capture_output=True, text=True, timeout=60,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "pip install 'tasklens[demo]'" in result.stderr


def _succeeded(client: httpx.Client, task: str, executor: str, timeout: float) -> float:
    """``bgtask_finished_total`` of ``task`` run by ``executor`` with success, once non-zero."""
    return wait_for(
        lambda: scrape(client).value(
            "bgtask_finished_total", task=task, executor=executor, outcome="success"
        ),
        timeout,
        f"{task} ({executor}) counted in {client.base_url}metrics",
    )


def _readme_block(marker: str) -> str:
    readme = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- example:{marker} -->\s*```python\n(.*?)```", readme, re.S)
    assert match, f"README lost its {marker} example"
    return match.group(1)


def test_readme_example_runs_under_uvicorn(venv: Path, tmp_path: Path) -> None:
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "-q", "fastapi", "uvicorn", cwd=tmp_path)
    (tmp_path / "app.py").write_text(_readme_block("app"))
    port = free_port()
    env = clean_env()
    env.pop("PYTHONPATH")
    args = [str(python), "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port)]
    with ServerProcess(args, env, tmp_path / "server.log", port, cwd=tmp_path) as server:
        server.wait_ready("/docs")
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            answer = client.post("/send-notification/ada@example.com")
            assert answer.json() == {"message": "Notification sent in the background"}
            finished = _succeeded(client, "app.write_notification", "thread_pool", 10)
    assert finished == 1.0
    written = (tmp_path / "log.txt").read_text()
    assert written == "notification for ada@example.com: some notification"


def test_readme_celery_example_runs_with_a_real_broker_and_worker(
    venv: Path, tmp_path: Path
) -> None:
    """'When one process is not enough', as written (broker and metrics port moved to free
    ones): the installed wheel with its celery extra, ``celery -A shop worker`` (prefork,
    the README's command), uvicorn, one request -> one run counted on the worker."""
    from tests.support.celery_worker import celery_worker
    from tests.support.redis_server import RedisServer

    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "-q", "celery[redis]>=5.3.0", "fastapi", "uvicorn",
         cwd=tmp_path)  # fmt: skip
    worker_port = free_port()
    with RedisServer(tmp_path / "redis") as redis:
        shop = _readme_block("celery-shop")
        assert "redis://127.0.0.1:6379/0" in shop and "metrics_port=9808" in shop
        shop = shop.replace("redis://127.0.0.1:6379/0", redis.url)
        (tmp_path / "shop.py").write_text(shop.replace("9808", str(worker_port)))
        (tmp_path / "main.py").write_text(_readme_block("celery-main"))
        env = clean_env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "worker-metrics"))
        env.pop("PYTHONPATH")
        env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
        worker = celery_worker("shop", env, tmp_path / "worker.log", worker_port)
        worker.args[0] = str(venv / "bin" / "celery")
        worker.cwd = tmp_path
        port = free_port()
        web_args = [str(python), "-m", "uvicorn", "main:app", "--host", "127.0.0.1",
                    "--port", str(port)]  # fmt: skip
        # As the README's commands: the directory is the worker's alone (the web app has
        # one process; a worker refuses a directory another running process writes to).
        web_env = {k: v for k, v in env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        web = ServerProcess(web_args, web_env, tmp_path / "web.log", port, cwd=tmp_path)
        with worker, web:
            worker.wait_ready("/metrics")
            web.wait_ready("/docs")
            with httpx.Client(base_url=web.base_url, timeout=10) as client:
                answer = client.post("/send-notification/ada@example.com")
                assert answer.json() == {"message": "Notification sent in the background"}
                sent = _succeeded(client, "shop.write_notification", "broker", 10)
            with httpx.Client(base_url=worker.base_url, timeout=10) as client:
                ran = _succeeded(client, "shop.write_notification", "celery", 30)
    assert (sent, ran) == (1.0, 1.0)
