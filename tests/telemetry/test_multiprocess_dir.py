"""telemetry.multiprocess: the multiprocess directory is prepared safely, dead workers'
live gauges are dropped, and tasklens/gunicorn_conf.py refuses to start without a directory.
(The whole path, with gunicorn and four workers, is proven in tests/e2e/test_multiworker.py.)
"""

from __future__ import annotations

import os
import runpy
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from tasklens.telemetry import multiprocess
from tasklens.telemetry.multiprocess import MultiprocessDirectoryError, prepare_directory

REPO = Path(__file__).resolve().parents[2]


def test_missing_directory_is_created_private(tmp_path: Path) -> None:
    target = tmp_path / "a" / "metrics"
    assert prepare_directory(target) == target
    assert target.is_dir()
    assert stat.S_IMODE(target.stat().st_mode) == 0o700


def test_stale_db_files_are_wiped_and_other_files_kept(tmp_path: Path) -> None:
    (tmp_path / "counter_123.db").write_bytes(b"x" * 16)
    (tmp_path / "gauge_livesum_123.db").write_bytes(b"x" * 16)
    (tmp_path / "README").write_text("not ours")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.db"
    outside.write_text("target of a symlink")
    (tmp_path / "link.db").symlink_to(outside)
    try:
        prepare_directory(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["README"]
        assert outside.read_text() == "target of a symlink"  # the link went, not its target
    finally:
        outside.unlink()


def test_wipe_false_keeps_files(tmp_path: Path) -> None:
    (tmp_path / "counter_1.db").write_bytes(b"x")
    prepare_directory(tmp_path, wipe=False)
    assert (tmp_path / "counter_1.db").exists()


def test_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(MultiprocessDirectoryError, match="is a symlink"):
        prepare_directory(link)


def test_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(MultiprocessDirectoryError, match="is not a directory"):
        prepare_directory(path)


def test_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, 65534, 65534)
    else:
        theirs = Path("/")  # owned by root, not by us
    with pytest.raises(MultiprocessDirectoryError, match=r"is owned by uid \d+, not by"):
        prepare_directory(theirs, wipe=False)


def test_unwritable_directory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # root may write anywhere, so the permission check itself is made to say no.
    monkeypatch.setattr(multiprocess.os, "access", lambda *_: False)
    with pytest.raises(MultiprocessDirectoryError, match="is not writable"):
        prepare_directory(tmp_path)


def test_unset_variable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delenv("prometheus_multiproc_dir", raising=False)
    with pytest.raises(MultiprocessDirectoryError, match="PROMETHEUS_MULTIPROC_DIR is not set"):
        prepare_directory()


def test_child_exit_drops_live_gauges_and_keeps_counters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("gauge_livesum_42.db", "gauge_livesum_43.db", "counter_42.db"):
        (tmp_path / name).write_bytes(b"x")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    multiprocess.child_exit(server=None, worker=SimpleNamespace(pid=42))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "counter_42.db",
        "gauge_livesum_43.db",
    ]


def test_on_starting_prepares_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "metrics"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(target))
    multiprocess.on_starting(server=None)
    assert target.is_dir()


def test_gunicorn_config_requires_the_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with pytest.raises(RuntimeError, match="set PROMETHEUS_MULTIPROC_DIR"):
        runpy.run_path(str(REPO / "tasklens" / "gunicorn_conf.py"))


def test_gunicorn_config_wires_the_hooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    config = runpy.run_path(str(REPO / "tasklens" / "gunicorn_conf.py"))
    assert config["worker_class"].endswith("UvicornWorker")
    assert config["preload_app"] is False
    (tmp_path / "gauge_livesum_7.db").write_bytes(b"x")
    config["child_exit"](None, SimpleNamespace(pid=7))
    assert not (tmp_path / "gauge_livesum_7.db").exists()


def test_scrape_survives_an_empty_worker_file(tmp_path: Path) -> None:
    """A worker killed between creating and sizing its file leaves it empty: prometheus_client's
    own collector fails the whole scrape on it; tasklens's skips it and sums the rest."""
    import struct

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.mmap_dict import MmapedDict, mmap_key
    from prometheus_client.multiprocess import MultiProcessCollector

    from tasklens.telemetry.exposition import WorkerFilesCollector

    live = MmapedDict(str(tmp_path / "counter_101.db"))
    key = mmap_key("bgtask_enqueued", "bgtask_enqueued_total", ("task",), ("t",), "help")
    live.write_value(key, 7.0, 0.0)
    live.close()
    (tmp_path / "counter_102.db").write_bytes(b"")

    upstream = CollectorRegistry()
    MultiProcessCollector(upstream, path=str(tmp_path))
    with pytest.raises(struct.error):
        generate_latest(upstream)

    ours = CollectorRegistry()
    WorkerFilesCollector(ours, path=str(tmp_path))
    assert 'bgtask_enqueued_total{task="t"} 7.0' in generate_latest(ours).decode()
