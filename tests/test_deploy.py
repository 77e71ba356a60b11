"""deploy/k8s and docker-compose.yml against the code they run, so a renamed flag or route breaks a test, not a
rollout: every recsys command line parses with the CLI's own options (and torchrun's with torchrun's parser),
probes and the Prometheus scrape target are routes the service has, on the port its command listens on;
Services select pods and target ports that exist; volumes, claims and config maps resolve; the training
config in the ConfigMap is a valid config; REDIS_URL names the Redis Service."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from torch.distributed.run import get_args_parser
from typer.main import get_command

from recsys.cli.main import app as cli_app
from recsys.config import TrainConfig
from services.ranking.app import create_app
from services.ranking.settings import ServeSettings
from tests.conftest import REPO_ROOT

K8S = REPO_ROOT / "deploy" / "k8s"
COMPOSE = REPO_ROOT / "docker-compose.yml"
IMAGE = "recsys:"  # the image deploy/Dockerfile builds (ENTRYPOINT ["recsys"])


def _documents() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def _objects(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in _documents() if doc["kind"] == kind}


def _pod_specs() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(workload name, pod template metadata, pod spec) of every Deployment, StatefulSet and Job."""
    return [(name, doc["spec"]["template"]["metadata"], doc["spec"]["template"]["spec"])
            for kind in ("Deployment", "StatefulSet", "Job") for name, doc in _objects(kind).items()]


def _recsys_containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [(name, spec, c) for name, _, spec in _pod_specs() for c in spec["containers"]
            if c["image"].startswith(IMAGE)]


def parse_recsys(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """``recsys ARGV`` parsed by the CLI itself (unknown flags, missing required options and bad values
    raise); (the subcommand's path, its parameters)."""
    command = get_command(cli_app)
    words, path = list(argv), []
    while getattr(command, "commands", None) is not None:  # a group (typer's own click)
        assert words, f"recsys {shlex.join(argv)}: no subcommand"
        name = words.pop(0)
        assert name in command.commands, f"recsys {shlex.join(argv)}: no command '{name}'"
        command, path = command.commands[name], [*path, name]
    context = command.make_context(" ".join(path), words)
    return " ".join(path), context.params


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item for item in container.get("env", [])}


def _container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port (a number, or the name of one of the container's ports) as a number."""
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    return ports[port] if isinstance(port, str) else port


def _route_paths() -> set[tuple[str, str]]:
    """(METHOD, path) of every operation the service's OpenAPI document lists (the app is built, not started)."""
    paths = create_app(ServeSettings(artifact=Path("unused"))).openapi()["paths"]
    return {(method.upper(), path) for path, operations in paths.items() for method in operations}


def test_the_image_runs_recsys() -> None:
    text = (REPO_ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["recsys"\]$', text, re.M)
    assert re.search(r"^EXPOSE 8000$", text, re.M)


def test_kustomization_lists_files_that_exist() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["resources"]
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource


def test_every_recsys_command_parses_with_the_cli() -> None:
    commands = {}
    for name, _, container in _recsys_containers():
        if "command" in container:  # torchrun: checked below
            continue
        commands[name] = parse_recsys(container["args"])[0]
    assert commands == {"ranking": "serve", "recsys-materialize": "features materialize"}


def test_the_training_job_is_torchrun_across_its_pods() -> None:
    job = _objects("Job")["recsys-train"]
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["command"] == ["python", "-m", "torch.distributed.run"]
    launch = get_args_parser().parse_args(container["args"])
    assert launch.module and launch.training_script == "recsys"
    subcommand, params = parse_recsys(launch.training_script_args)
    assert subcommand == "train" and params["resume"]  # a replaced pod continues from the last checkpoint
    assert job["spec"]["completionMode"] == "Indexed"
    assert int(launch.nnodes) == job["spec"]["completions"] == job["spec"]["parallelism"]
    assert launch.rdzv_backend == "c10d"
    # pod 0 of an Indexed Job answers at JOB-0.SUBDOMAIN; the subdomain is a headless Service over the pods
    host, port = launch.rdzv_endpoint.rsplit(":", 1)
    assert host == f"{job['metadata']['name']}-0.{spec['subdomain']}"
    service = _objects("Service")[spec["subdomain"]]
    assert service["spec"]["clusterIP"] == "None" and service["spec"].get("publishNotReadyAddresses")
    assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert int(port) in {p["containerPort"] for p in container["ports"]}
    # the config it names is the mounted ConfigMap's key, and a valid training config
    config = Path(params["config"])
    mount = next(m for m in container["volumeMounts"] if config.parent == Path(m["mountPath"]))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    text = _objects("ConfigMap")[volume["configMap"]["name"]]["data"][config.name]
    loaded = TrainConfig.model_validate(yaml.safe_load(text))
    assert loaded.trainer.batch_size % int(launch.nnodes) == 0


def test_probes_and_scraping_hit_routes_on_the_port_serve_listens_on() -> None:
    routes = _route_paths()
    (deployment,) = _objects("Deployment").values()
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    _, params = parse_recsys(container["args"])
    assert params["host"] == "0.0.0.0"  # reachable from the kubelet and the Service, not only from the pod
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and ("GET", path) in routes
        assert _container_port(container, get["port"]) == params["port"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert ("GET", annotations["prometheus.io/path"]) in routes
    assert int(annotations["prometheus.io/port"]) == params["port"]


def test_services_select_their_pods_and_target_ports_that_exist() -> None:
    pods = {name: (meta, spec) for name, meta, spec in _pod_specs()}
    for name, service in _objects("Service").items():
        matched = [(meta, spec) for meta, spec in pods.values()
                   if service["spec"]["selector"].items() <= meta["labels"].items()]
        assert matched, f"Service {name} selects no pod"
        for meta, spec in matched:
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                assert any(_container_port(c, target) in {p["containerPort"] for p in c.get("ports", [])}
                           for c in spec["containers"]), (name, target)


def test_volumes_and_claims_resolve() -> None:
    claims = set(_objects("PersistentVolumeClaim"))
    config_maps = set(_objects("ConfigMap"))
    for name, _, spec in _pod_specs():
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        templates = {t["metadata"]["name"] for t in _objects("StatefulSet").get(name, {}).get("spec", {}).get(
            "volumeClaimTemplates", [])}
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in templates, (name, mount["name"])
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, (name, volume)
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, (name, volume)
    work = _objects("PersistentVolumeClaim")["recsys-work"]
    assert work["spec"]["accessModes"] == ["ReadWriteMany"]  # every training pod writes its checkpoint shards


def test_redis_url_names_the_redis_service() -> None:
    redis = _objects("Service")["redis"]
    seen = 0
    for name, _, container in _recsys_containers():
        if "REDIS_URL" not in _env(container):
            assert "command" in container, f"{name} would start an embedded Redis in its pod"
            continue
        url = urlparse(_env(container)["REDIS_URL"]["value"])
        assert url.hostname == redis["metadata"]["name"], name
        assert url.port in {p["port"] for p in redis["spec"]["ports"]}, name
        seen += 1
    assert seen == 2


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_commands_parse_and_its_healthcheck_hits_readyz(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert parse_recsys(services["materialize"]["command"])[0] == "features materialize"
    ranking = services["ranking"]
    subcommand, params = parse_recsys(ranking["command"])
    assert subcommand == "serve" and params["host"] == "0.0.0.0"
    url = re.search(r"https?://[^'\"]+", " ".join(ranking["healthcheck"]["test"]))
    assert url is not None
    check = urlparse(url.group(0))
    assert check.port == params["port"] and ("GET", check.path) in _route_paths()
    assert {int(p.rsplit(":", 1)[1]) for p in ranking["ports"]} == {params["port"]}
    redis_url = urlparse(ranking["environment"]["REDIS_URL"])
    assert redis_url.hostname in services and redis_url.port == 6379
