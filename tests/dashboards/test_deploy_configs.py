"""Deploy configs: promtool and amtool accept them; compose, k8s and Grafana files agree."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from dashboards import config, rules
from deploy.local import configs
from tests.dashboards.tools import REPO_ROOT, assert_ok, run
from tests.support.net import free_port
from tests.support.otlp_receiver import OTLPReceiver
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
    assert app["static_configs"][0]["targets"] == ["app:8000"]
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
    for name in ("app", "otel-collector", "prometheus", "alertmanager", "tempo", "loki", "grafana"):
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
