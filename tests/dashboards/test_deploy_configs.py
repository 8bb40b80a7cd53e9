"""Deploy configs: promtool and amtool accept them; compose, k8s and Grafana files agree."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
import yaml

from dashboards import config, rules
from deploy.local import configs
from tests.dashboards.tools import REPO_ROOT, assert_ok, run
from tests.support.metrics import Samples, scrape
from tests.support.net import free_port
from tests.support.otlp_receiver import OTLPReceiver
from tests.support.polling import wait_for
from tests.support.redis_server import RedisServer
from tests.support.server import ServerProcess, clean_env

DEPLOY = REPO_ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
K8S = DEPLOY / "k8s"
PINNED = re.compile(r"^[\w./-]+:(?!latest$)v?\d[\w.-]*$")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    return load(COMPOSE_DIR / "docker-compose.yml")


# --- Prometheus ------------------------------------------------------------------------------


def test_rendered_local_prometheus_config(tmp_path: Path, promtool: str) -> None:
    path = tmp_path / "prometheus.yml"
    path.write_text(
        configs.render_prometheus_config(
            app_target="127.0.0.1:8000",
            alertmanager="127.0.0.1:9093",
            scrape_interval="1s",
            evaluation_interval="1s",
        )
    )
    result = run([promtool, "check", "config", str(path)])
    assert_ok(result)
    assert "tasklens-alerts.yml" in result.stdout and "1 rule files found" in result.stdout
    config = load(path)
    assert config["scrape_configs"][0]["job_name"] == "tasklens"
    assert config["global"]["scrape_timeout"] == "1s"


def test_local_prometheus_config_scrapes_celery_workers_as_the_same_job(
    tmp_path: Path, promtool: str
) -> None:
    """A worker's own /metrics port is one more instance of the job the rules select."""
    path = tmp_path / "prometheus.yml"
    path.write_text(
        configs.render_prometheus_config(
            app_target="127.0.0.1:8000",
            extra_targets=["127.0.0.1:8001", "127.0.0.1:9808"],
            alertmanager="127.0.0.1:9093",
        )
    )
    assert_ok(run([promtool, "check", "config", str(path)]))
    (job,) = load(path)["scrape_configs"]
    assert job["job_name"] == "tasklens"
    assert job["static_configs"] == [
        {"targets": ["127.0.0.1:8000", "127.0.0.1:8001", "127.0.0.1:9808"]}
    ]


def test_local_prometheus_config_with_a_long_scrape_interval(tmp_path: Path, promtool: str) -> None:
    path = tmp_path / "prometheus.yml"
    path.write_text(
        configs.render_prometheus_config(
            app_target="127.0.0.1:1", alertmanager="127.0.0.1:2", scrape_interval="30s"
        )
    )
    assert_ok(run([promtool, "check", "config", str(path)]))
    assert load(path)["global"]["scrape_timeout"] == "10s"


def test_compose_prometheus_config_and_its_rules(promtool: str) -> None:
    result = run([promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")])
    assert_ok(result)
    assert "1 rule files found" in result.stdout
    assert "tasklens-alerts.yml" in result.stdout, "rule_files must resolve to the generated rules"


def test_compose_prometheus_scrapes_the_app_as_the_alerted_job() -> None:
    config = load(DEPLOY / "prometheus" / "prometheus.yml")
    app = next(job for job in config["scrape_configs"] if job["job_name"] == "tasklens")
    assert app["static_configs"][0]["targets"] == ["app:8000", "celery-web:8001", "worker:9808"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alertmanager:9093"
    ]


def test_template_needs_every_placeholder() -> None:
    with pytest.raises(KeyError):
        configs.render_template(configs.PROMETHEUS_TEMPLATE, {"APP_TARGET": "x"})


# --- Alertmanager ----------------------------------------------------------------------------


def test_compose_alertmanager_config(amtool: str) -> None:
    assert_ok(run([amtool, "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml")]))


def test_rendered_local_alertmanager_config(tmp_path: Path, amtool: str) -> None:
    path = tmp_path / "alertmanager.yml"
    path.write_text(configs.render_alertmanager_config(webhook_url="http://127.0.0.1:5001/hook"))
    assert_ok(run([amtool, "check-config", str(path)]))
    receiver = load(path)["receivers"][0]
    assert receiver["webhook_configs"][0]["url"] == "http://127.0.0.1:5001/hook"


def test_alertmanager_inhibitions_name_real_alerts() -> None:
    names = set(rules.alert_names())
    for rule in load(DEPLOY / "alertmanager" / "alertmanager.yml")["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            value = re.search(r'alertname=~?"([^"]+)"', matcher)
            assert value, matcher
            assert set(value.group(1).split("|")) <= names, matcher


# --- Compose ---------------------------------------------------------------------------------


def test_compose_services() -> None:
    services = compose()["services"]
    for name in ("app", "otel-collector", "prometheus", "alertmanager", "tempo", "loki", "grafana",
                 "redis", "worker", "celery-web"):  # fmt: skip
        assert name in services


def test_compose_images_are_pinned() -> None:
    for name, service in compose()["services"].items():
        image = service.get("image", "")
        if "build" in service:
            dockerfile = (COMPOSE_DIR / service["build"]["context"]) / service["build"][
                "dockerfile"
            ]
            bases = re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), re.MULTILINE)
            assert bases and all(PINNED.match(base) for base in bases), (name, bases)
        else:
            assert PINNED.match(image), f"{name}: image {image!r} has no pinned version tag"
        assert not image.endswith(":latest"), name


def test_compose_mounts_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), f"{name}: {source} does not exist"


def test_compose_prometheus_loads_the_generated_rules() -> None:
    """prometheus.yml names its rules relative to itself: the mounts must keep that path."""
    prometheus = compose()["services"]["prometheus"]
    flag = next(arg for arg in prometheus["command"] if arg.startswith("--config.file="))
    config_path = Path(flag.split("=", 1)[1])
    mounts = {
        Path(target): (COMPOSE_DIR / source).resolve()
        for source, target, *_ in (volume.split(":") for volume in prometheus["volumes"])
        if source.startswith(".")
    }
    assert mounts[config_path] == DEPLOY / "prometheus" / "prometheus.yml"
    (rule_file,) = load(DEPLOY / "prometheus" / "prometheus.yml")["rule_files"]
    in_container = Path(os.path.normpath(config_path.parent / rule_file))
    target = next(target for target in mounts if in_container.is_relative_to(target))
    assert mounts[target] / in_container.relative_to(target) == REPO_ROOT / config.RULES_YML


def test_compose_prometheus_flags() -> None:
    command = compose()["services"]["prometheus"]["command"]
    assert "--enable-feature=exemplar-storage" in command
    assert "--web.enable-remote-write-receiver" in command


def test_compose_app_runs_the_demo() -> None:
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text()
    assert (
        '"tasklens", "demo", "--host", "0.0.0.0", "--port", "8000", "--self-traffic"' in dockerfile
    )
    app = compose()["services"]["app"]
    assert app["build"]["dockerfile"] == "deploy/compose/Dockerfile"
    assert (COMPOSE_DIR / app["build"]["context"]).resolve() == REPO_ROOT
    assert app["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"


def _environment(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in service["environment"].items()}


def _redis_url_names_a_service(url: str, services: dict[str, int]) -> None:
    """``redis://<host>:<port>/0`` where host is a service of the stack listening on port."""
    match = re.fullmatch(r"redis://([\w-]+):(\d+)/\d+", url)
    assert match, url
    assert services.get(match.group(1)) == int(match.group(2)), (url, services)


def test_compose_celery_worker_and_web_are_scraped_as_the_alerted_job() -> None:
    """Redis, a prefork worker with its own multiprocess directory and metrics port, and the
    Celery demo's web app; Prometheus scrapes both as job "tasklens" at the ports they serve."""
    services = compose()["services"]
    assert services["redis"]["image"].startswith("redis:")
    worker, web = services["worker"], services["celery-web"]
    assert worker["command"][:4] == ["celery", "-A", "tasklens.demo_celery", "worker"]
    assert worker["command"][worker["command"].index("--pool") + 1] == "prefork"
    worker_env, web_env = _environment(worker), _environment(web)
    assert worker_env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")  # writable as nobody
    assert worker_env["TASKLENS_DEMO_WORKER_METRICS_HOST"] == "0.0.0.0"
    assert web["command"][:3] == ["python", "-m", "tasklens.demo_celery"]
    web_port = web["command"][web["command"].index("--port") + 1]
    for env in (worker_env, web_env):
        _redis_url_names_a_service(env["TASKLENS_DEMO_BROKER_URL"], {"redis": 6379})
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
    assert "redis" in worker["depends_on"] and "redis" in web["depends_on"]
    for service in (worker, web):
        assert service["build"] == services["app"]["build"]  # the same image, other commands
    assert 'pip install "/app[demo,celery]"' in (COMPOSE_DIR / "Dockerfile").read_text()
    prometheus = load(DEPLOY / "prometheus" / "prometheus.yml")
    (job,) = [job for job in prometheus["scrape_configs"] if job["job_name"] == "tasklens"]
    targets = job["static_configs"][0]["targets"]
    assert f"celery-web:{web_port}" in targets
    assert f"worker:{worker_env['TASKLENS_DEMO_WORKER_METRICS_PORT']}" in targets


# --- Grafana ---------------------------------------------------------------------------------


def test_grafana_datasources() -> None:
    sources = {s["uid"]: s for s in load(REPO_ROOT / config.DATASOURCES_YAML)["datasources"]}
    prometheus, tempo = sources["prometheus"], sources["tempo"]
    assert prometheus["type"] == "prometheus" and prometheus["isDefault"] is True
    assert prometheus["jsonData"]["exemplarTraceIdDestinations"] == [
        {"name": "trace_id", "datasourceUid": "tempo"}
    ]
    assert tempo["type"] == "tempo"
    assert tempo["jsonData"]["tracesToMetrics"]["datasourceUid"] == "prometheus"
    assert tempo["jsonData"]["serviceMap"]["datasourceUid"] == "prometheus"
    for query in tempo["jsonData"]["tracesToMetrics"]["queries"]:
        assert "$$__tags" in query["query"], "Grafana expands single $ in provisioning files"


def test_grafana_dashboard_provider_loads_the_generated_dashboards() -> None:
    provider = load(DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml")
    path = provider["providers"][0]["options"]["path"]
    mounts = dict(
        v.rsplit(":", 1)[0].split(":", 1) for v in compose()["services"]["grafana"]["volumes"]
    )
    source = next(src for src, target in mounts.items() if target == path)
    assert (COMPOSE_DIR / source).resolve() == (REPO_ROOT / config.OVERVIEW_JSON).parent


# --- Collector and Tempo ---------------------------------------------------------------------


def collector_config() -> dict[str, Any]:
    return load(DEPLOY / "otel-collector" / "config.yaml")


def test_collector_pipelines() -> None:
    config = collector_config()
    assert set(config["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics", "logs"}
    for pipeline in pipelines.values():
        for kind in ("receivers", "processors", "exporters"):
            assert set(pipeline[kind]) <= set(config[kind]), kind
    assert config["exporters"]["otlp/tempo"]["endpoint"] == "tempo:4317"


def test_k8s_collector_configmap_matches_compose() -> None:
    configmap = load(K8S / "otel-collector-config.yaml")
    assert configmap["kind"] == "ConfigMap"
    assert yaml.safe_load(configmap["data"]["config.yaml"]) == collector_config()


def test_tempo_config() -> None:
    tempo = load(DEPLOY / "tempo" / "tempo.yaml")
    assert set(tempo["distributor"]["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    remote_write = tempo["metrics_generator"]["storage"]["remote_write"][0]
    assert remote_write["url"] == "http://prometheus:9090/api/v1/write"


# --- Kubernetes ------------------------------------------------------------------------------


def test_k8s_manifests() -> None:
    kustomization = load(K8S / "kustomization.yaml")
    files = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    kinds = {load(K8S / name)["kind"] for name in files}
    assert kinds == {"Deployment", "Service", "PodMonitor", "PrometheusRule", "ConfigMap"}


def test_k8s_app_is_scraped_as_the_alerted_job() -> None:
    deployment = load(K8S / "deployment.yaml")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    container = pod["spec"]["containers"][0]
    assert PINNED.match(container["image"]), container["image"]
    ports = {port["name"] for port in container["ports"]}
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()

    monitor = load(K8S / "podmonitor.yaml")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    assert {endpoint["port"] for endpoint in monitor["podMetricsEndpoints"]} <= ports
    assert labels[monitor["jobLabel"]] == "tasklens"  # the job the generated rules select

    service = load(K8S / "service.yaml")["spec"]
    assert service["selector"].items() <= labels.items()
    assert {port["targetPort"] for port in service["ports"]} <= ports


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_k8s_celery_worker_and_web_are_scraped_as_the_alerted_job() -> None:
    """Redis behind a Service, workers and the Celery web app scraped by their own PodMonitor
    as job "tasklens" (the app's PodMonitor does not scrape them twice, nor they the app)."""
    pods = {
        name: load(K8S / f"{name}.yaml")
        for name in ("deployment", "worker-deployment", "celery-web-deployment", "redis-deployment")
    }
    labels = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in pods.items()}
    for name, deployment in pods.items():
        assert _labels_match(deployment["spec"]["selector"]["matchLabels"], labels[name]), name
        for other in pods:
            if other != name:  # no two Deployments claim the same pods
                selector = deployment["spec"]["selector"]["matchLabels"]
                assert not _labels_match(selector, labels[other]), (name, other)
    redis = load(K8S / "redis-service.yaml")
    assert _labels_match(redis["spec"]["selector"], labels["redis-deployment"])
    redis_ports = {redis["metadata"]["name"]: redis["spec"]["ports"][0]["port"]}

    app_monitor = load(K8S / "podmonitor.yaml")["spec"]
    monitor = load(K8S / "celery-podmonitor.yaml")["spec"]
    endpoints = {e["port"] for e in monitor["podMetricsEndpoints"]}
    for name in ("worker-deployment", "celery-web-deployment"):
        (container,) = pods[name]["spec"]["template"]["spec"]["containers"]
        assert PINNED.match(container["image"]), container["image"]
        assert _labels_match(monitor["selector"]["matchLabels"], labels[name])
        assert not _labels_match(app_monitor["selector"]["matchLabels"], labels[name])
        assert labels[name][monitor["jobLabel"]] == "tasklens"  # the job the rules select
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert len(endpoints & set(ports)) == 1, (name, ports)  # scraped exactly once
        env = {item["name"]: item.get("value") for item in container["env"]}
        _redis_url_names_a_service(env["TASKLENS_DEMO_BROKER_URL"], redis_ports)
        if name == "worker-deployment":
            assert container["args"][:4] == ["celery", "-A", "tasklens.demo_celery", "worker"]
            assert env["TASKLENS_DEMO_WORKER_METRICS_HOST"] == "0.0.0.0"
            assert int(env["TASKLENS_DEMO_WORKER_METRICS_PORT"]) == ports["metrics"]
            mounts = [m["mountPath"] for m in container["volumeMounts"]]
            # A subdirectory of the emptyDir: the worker creates it as its own user.
            assert any(Path(env["PROMETHEUS_MULTIPROC_DIR"]).parent == Path(m) for m in mounts), (
                env,
                mounts,
            )
        else:
            assert str(ports["http"]) in container["args"]
    assert not _labels_match(monitor["selector"]["matchLabels"], labels["deployment"])


# --- Logs: collector -> Loki, Grafana's trace <-> logs links ----------------------------------
# Loki and the collector are not installable here (no Debian, PyPI or npm package): their files
# are checked structurally; the log line the derived field reads is a real one from tasklens.


def loki_config() -> dict[str, Any]:
    return load(DEPLOY / "loki" / "loki.yaml")


def datasources() -> dict[str, dict[str, Any]]:
    return {s["uid"]: s for s in load(REPO_ROOT / config.DATASOURCES_YAML)["datasources"]}


def test_compose_loki_is_pinned_to_a_release_with_otlp_ingestion() -> None:
    loki = compose()["services"]["loki"]
    repository, tag = loki["image"].rsplit(":", 1)
    assert repository == "grafana/loki" and PINNED.match(loki["image"]), loki["image"]
    assert int(tag.split(".")[0]) >= 3, "native OTLP ingestion (/otlp) needs Loki 3"
    flag = next(arg for arg in loki["command"] if arg.startswith("-config.file="))
    mounts = dict(volume.split(":")[:2] for volume in loki["volumes"])
    source = next(src for src, target in mounts.items() if target == flag.split("=", 1)[1])
    assert (COMPOSE_DIR / source).resolve() == DEPLOY / "loki" / "loki.yaml"
    assert mounts["loki-data"] == loki_config()["common"]["path_prefix"]
    assert "loki-data" in compose()["volumes"]
    assert "3100:3100" in loki["ports"]


def test_loki_keeps_trace_ids_as_structured_metadata() -> None:
    """OTLP records' trace_id/span_id become structured metadata only with schema v13 (tsdb)
    and allow_structured_metadata; without them Loki rejects the collector's pushes."""
    loki = loki_config()
    assert loki["server"]["http_listen_port"] == 3100
    assert loki["limits_config"]["allow_structured_metadata"] is True
    (schema,) = loki["schema_config"]["configs"]
    assert (schema["store"], schema["schema"]) == ("tsdb", "v13")
    assert loki["auth_enabled"] is False  # no X-Scope-OrgID header in the collector config


def test_collector_exports_logs_to_lokis_otlp_endpoint() -> None:
    config = collector_config()
    logs = config["service"]["pipelines"]["logs"]
    assert logs["receivers"] == ["otlp"]
    (exporter,) = logs["exporters"]
    assert exporter.split("/")[0] == "otlphttp", "the contrib loki exporter is deprecated"
    endpoint = config["exporters"][exporter]["endpoint"]
    port = loki_config()["server"]["http_listen_port"]
    assert endpoint == f"http://loki:{port}/otlp"  # otlphttp appends /v1/logs
    assert "loki" in compose()["services"]["otel-collector"]["depends_on"]


def test_the_app_sends_its_logs_to_the_collector() -> None:
    """Configuration: the compose and k8s app environments ask for OTLP logs."""
    app = compose()["services"]["app"]["environment"]
    assert app.get("OTEL_LOGS_EXPORTER") == "otlp"
    assert app["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
    (container,) = load(K8S / "deployment.yaml")["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env.get("OTEL_LOGS_EXPORTER") == "otlp"


def test_grafana_provisions_loki_with_links_to_tempo() -> None:
    sources = datasources()
    loki = sources["loki"]
    assert (loki["type"], loki["url"]) == ("loki", "http://loki:3100")
    assert "loki" in compose()["services"]["grafana"]["depends_on"]
    fields = {field["matcherType"]: field for field in loki["jsonData"]["derivedFields"]}
    assert set(fields) == {"label", "regex"}
    for field in fields.values():
        assert sources[field["datasourceUid"]]["type"] == "tempo"
        assert field["url"] == "$${__value.raw}", "Grafana expands a single $ in provisioning"
    # Loki's OTLP ingestion stores the record's trace id as structured metadata `trace_id`.
    assert fields["label"]["matcherRegex"] == "trace_id"


def test_tempo_links_traces_to_their_logs_in_loki() -> None:
    sources = datasources()
    to_logs = sources["tempo"]["jsonData"]["tracesToLogsV2"]
    assert sources[to_logs["datasourceUid"]]["type"] == "loki"
    assert to_logs["tags"] == [{"key": "service.name", "value": "service_name"}]
    assert to_logs["customQuery"] is True
    query = to_logs["query"]
    # The stream selector from the tags, then the structured-metadata filter the derived field
    # reads: an OTLP record's body does not contain its trace id, so no line filter.
    assert query == '{$${__tags}} | trace_id="$${__trace.traceId}"'
    assert "$" not in query.replace("$$", ""), "Grafana expands a single $ in provisioning"


#: A failing task in a real instrumented Starlette app, with tasklens's own JSON log lines on
#: stderr, then the trace id of each span.
_FAILING_TASK = """
import json, sys
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient
import tasklens

def charge(order):
    raise ValueError(f"card declined for order {order}")

async def pay(request):
    return PlainTextResponse("ok", background=BackgroundTask(charge, 7))

tasklens.setup(service_name="loki-link")
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
app = Starlette(routes=[Route("/pay", pay, methods=["POST"])])
tasklens.instrument(app, tracer_provider=provider)
with TestClient(app) as client:
    assert client.post("/pay").status_code == 200
structlog.get_logger("shop").warning("outside any trace", order=7)
spans = {s.name: format(s.context.trace_id, "032x") for s in exporter.get_finished_spans()}
print("SPANS " + json.dumps(spans), file=sys.stderr)
"""


def test_derived_field_finds_the_trace_id_in_a_real_tasklens_line() -> None:
    env = clean_env(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none")
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _FAILING_TASK],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    spans = json.loads(next(line for line in lines if line.startswith("SPANS "))[6:])
    task_trace = spans["bgtask __main__.charge"]
    (failure,) = [line for line in lines if '"background task failed"' in line]
    event = json.loads(failure)
    assert event["trace_id"] == task_trace

    pattern = re.compile(datasources()["loki"]["jsonData"]["derivedFields"][1]["matcherRegex"])
    found = pattern.search(failure)
    assert found and found.group(1) == task_trace, failure
    # The same event as the console renderer (or a stdlib %(trace_id)s format) writes it.
    console = structlog.dev.ConsoleRenderer(colors=False)(None, "error", dict(event))
    found = pattern.search(str(console))
    assert found and found.group(1) == task_trace, console
    # Lines without a trace id give no link.
    (untraced,) = [line for line in lines if '"outside any trace"' in line]
    assert "trace_id" not in json.loads(untraced) and not pattern.search(untraced)


def test_the_compose_app_exports_failure_records_that_join_their_traces(tmp_path: Path) -> None:
    """Behaviour: the demo as the image runs it (the Dockerfile's command) with the compose
    app's environment, a real OTLP gRPC receiver standing in for the collector. Failure
    records arrive with the trace id of a task span received there (what Loki stores as
    trace_id) and the same service.name (Loki's service_name, Tempo's trace-to-logs tag)."""
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text()
    command = json.loads(re.search(r"^CMD (.+)$", dockerfile, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert command[:2] == ["tasklens", "demo"]
    port = free_port()
    args = [sys.executable, "-m", "tasklens.cli", *command[1:]]
    args[args.index("--host") + 1], args[args.index("--port") + 1] = "127.0.0.1", str(port)
    app_env = {k: str(v) for k, v in compose()["services"]["app"]["environment"].items()}
    with OTLPReceiver() as rx:
        app_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = rx.grpc_endpoint  # the collector's stand-in
        env = clean_env(
            **app_env,
            OTEL_BSP_SCHEDULE_DELAY="200",
            OTEL_BLRP_SCHEDULE_DELAY="200",
            TASKLENS_DEMO_DIR=str(tmp_path),
        )
        with ServerProcess(args, env, tmp_path / "demo.log", port) as server:
            server.wait_ready("/health")

            def joined(r: OTLPReceiver) -> list[Any]:
                traces = {s.trace_id for s in r.spans() if s.name.startswith("bgtask ")}
                failures = [x for x in r.logs() if x.body == "background task failed"]
                return [x for x in failures if x.trace_id in traces]

            records = rx.wait_for(joined, timeout=45)
        spans = rx.spans()
    service = app_env["OTEL_SERVICE_NAME"]
    for record in records:
        assert record.transport == "grpc" and len(record.trace_id) == 32
        assert record.resource["service.name"] == service
        assert record.attributes["exception.type"]
    assert {s.resource["service.name"] for s in spans} == {service}


def test_the_compose_celery_services_run_as_configured(tmp_path: Path) -> None:
    """Behaviour: the compose worker and Celery web commands, with their compose environment
    (hosts and ports moved to loopback, a real redis-server for ``redis``, a real OTLP gRPC
    receiver for the collector). Orders sent to the web app run on the worker: its /metrics
    counts each declined card (the demo's seeded 20%) exactly, and its spans arrive as
    CONSUMER spans of the worker's service, in the web request's trace."""
    services = compose()["services"]
    worker, web = services["worker"], services["celery-web"]
    orders = range(1, 9)
    declined = sum(random.Random(order).random() < 0.2 for order in orders)
    assert 0 < declined < len(orders)  # the seeded choice is a mix, whatever the count
    metrics_port, web_port = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(RedisServer(tmp_path / "redis"))
        rx = stack.enter_context(OTLPReceiver())
        moved = {
            "TASKLENS_DEMO_BROKER_URL": redis.url,
            "OTEL_EXPORTER_OTLP_ENDPOINT": rx.grpc_endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "TASKLENS_DEMO_DIR": str(tmp_path),
        }
        worker_env = clean_env(
            **{
                **_environment(worker),
                **moved,
                "TASKLENS_DEMO_WORKER_METRICS_HOST": "127.0.0.1",
                "TASKLENS_DEMO_WORKER_METRICS_PORT": str(metrics_port),
                "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "worker-metrics"),
            }
        )
        worker_args = [str(Path(sys.executable).with_name("celery")), *worker["command"][1:]]
        worker_args += ["--without-heartbeat", "--without-gossip", "--without-mingle"]
        worker_proc = stack.enter_context(
            ServerProcess(worker_args, worker_env, tmp_path / "worker.log", metrics_port)
        )
        worker_proc.wait_ready("/metrics", timeout=60)
        web_args = [sys.executable, *web["command"][1:]]
        web_args[web_args.index("--host") + 1] = "127.0.0.1"
        web_args[web_args.index("--port") + 1] = str(web_port)
        web_args.remove("--self-traffic")
        web_env = clean_env(**{**_environment(web), **moved})
        web_proc = stack.enter_context(
            ServerProcess(web_args, web_env, tmp_path / "web.log", web_port)
        )
        web_proc.wait_ready("/health", timeout=60)
        with httpx.Client(base_url=web_proc.base_url, timeout=10) as client:
            for order in orders:
                assert client.post(f"/orders/{order}").status_code == 200
        task = "tasklens.demo_celery.charge_card"
        with httpx.Client(base_url=worker_proc.base_url, timeout=10) as client:

            def finished() -> Samples | None:
                samples = scrape(client)
                done = samples.total("bgtask_finished_total", task=task, executor="celery")
                return samples if done == len(orders) else None

            samples = wait_for(finished, timeout=30, what="every charge_card run on /metrics")
        assert (
            samples.value("bgtask_finished_total", task=task, executor="celery", outcome="failure")
            == declined
        )
        assert (
            samples.value(
                "bgtask_failures_total",
                task=task,
                exception="tasklens.demo_celery.CardDeclinedError",
            )
            == declined
        )

        def consumer_spans(r: OTLPReceiver) -> list[Any]:
            spans = [s for s in r.spans() if s.name == f"bgtask {task}" and s.kind == 5]
            return spans if len(spans) == len(orders) else []

        spans = rx.wait_for(consumer_spans, timeout=30)
        by_id = {s.span_id: s for s in rx.spans()}
    for span in spans:
        assert span.resource["service.name"] == _environment(worker)["OTEL_SERVICE_NAME"]
        send = by_id[span.parent_span_id]  # the web process's send span, same trace
        assert send.trace_id == span.trace_id
        assert send.resource["service.name"] == _environment(web)["OTEL_SERVICE_NAME"]
