"""deploy/: the Kubernetes manifests as rendered by ``kubectl kustomize``, and the Dockerfile.

scripts/check-deploy validates the rendered resources against the Kubernetes schemas; these
tests check what the schemas cannot: that the manifests and the processor agree. The names
that both sides use (environment variables, flags, probe paths, the entrypoint) come from the
package's own declarations, so a rename on one side fails here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import pytest

from memory_service_processor._cli.loader import load_processor
from memory_service_processor._cli.options import OPTIONS
from memory_service_processor._health import HEALTHZ_PATH, READYZ_PATH
from memory_service_processor._settings import parse_duration

yaml = pytest.importorskip("yaml", reason="PyYAML reads the rendered manifests (the [test] extra has it)")

REPO = Path(__file__).resolve().parents[1]
KUBERNETES = REPO / "deploy" / "kubernetes"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None,
    reason="kubectl is not on PATH: it renders deploy/kubernetes (kubectl kustomize, kustomize v5)",
)

#: The environment variable of each option of ``run``, by setting name.
ENV = {o.name: o.env for o in OPTIONS if o.env}
#: The shard settings the manifests rely on (their declarations are the options').
SHARD_COUNT_ENV = ENV["shard_count"]
SHARD_FLAG = next(o.flag for o in OPTIONS if o.name == "shard_index_from_hostname")


def render(path: Path) -> List[Dict[str, Any]]:
    """``kubectl kustomize path``, parsed."""
    r = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def one(docs: List[Dict[str, Any]], kind: str) -> Dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} resources"
    return found[0]


class Rendered:
    """The resources of one rendering, with shortcuts to the parts the tests look at."""

    def __init__(self, docs: List[Dict[str, Any]]) -> None:
        self.docs = docs
        self.statefulset = one(docs, "StatefulSet")
        self.configmap = one(docs, "ConfigMap")
        self.service = one(docs, "Service")
        self.pdb = one(docs, "PodDisruptionBudget")
        self.pod = self.statefulset["spec"]["template"]["spec"]
        (self.container,) = self.pod["containers"]
        self.settings: Dict[str, str] = self.configmap["data"]
        self.env = {e["name"]: e for e in self.container.get("env", [])}


@pytest.fixture(scope="module", params=["base", "overlays/example"])
def rendered(request: Any) -> Rendered:
    return Rendered(render(KUBERNETES / request.param))


@pytest.fixture(scope="module")
def example() -> Rendered:
    return Rendered(render(KUBERNETES / "overlays" / "example"))


def test_replicas_and_shard_count_are_set_together(rendered: Rendered, example: Rendered) -> None:
    assert rendered.statefulset["spec"]["replicas"] == int(rendered.settings[SHARD_COUNT_ENV])
    assert example.statefulset["spec"]["replicas"] == 3  # the overlay's 3 shards
    assert rendered.statefulset["spec"]["podManagementPolicy"] == "Parallel"


def test_every_variable_is_an_option_of_run(rendered: Rendered) -> None:
    """A misspelt variable would be ignored silently by the processor: every
    ``MEMORY_SERVICE_*`` variable the manifests set is one that ``run`` reads."""
    known = set(ENV.values())
    names = [n for n in list(rendered.settings) + list(rendered.env) if n.startswith("MEMORY_SERVICE_")]
    assert names and set(names) <= known, sorted(set(names) - known)


def test_client_id_is_the_pod_name_and_shard_index_its_ordinal(rendered: Rendered) -> None:
    client_id = rendered.env[ENV["client_id"]]
    assert client_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert ENV["client_id"] not in rendered.settings
    args = rendered.container["args"]
    assert args[0] == "$(PROCESSOR_TARGET)" and SHARD_FLAG in args[1:]
    target = rendered.env["PROCESSOR_TARGET"]["valueFrom"]["configMapKeyRef"]
    assert target["name"] == rendered.configmap["metadata"]["name"]
    assert target["key"] in rendered.settings


def test_the_example_processor_loads(example: Rendered) -> None:
    target = example.settings["PROCESSOR_TARGET"]
    assert target == "memory_service_processor.examples.conversation_summarizer:ConversationSummarizer"
    assert type(load_processor(target)).__name__ == "ConversationSummarizer"
    assert int(example.settings[ENV["max_concurrency"]]) == 64
    image = example.container["image"]
    assert re.fullmatch(r"[\w.\-/]+/memory-service-processor:[\w.\-]+", image), image


def test_probes_ask_the_health_server(rendered: Rendered) -> None:
    live = rendered.container["livenessProbe"]["httpGet"]
    ready = rendered.container["readinessProbe"]["httpGet"]
    assert live["path"] == HEALTHZ_PATH and ready["path"] == READYZ_PATH
    ports = {p["name"]: p["containerPort"] for p in rendered.container["ports"]}
    health_port = int(rendered.settings[ENV["health_port"]])
    assert ports[live["port"]] == ports[ready["port"]] == health_port
    assert ports["metrics"] == int(rendered.settings[ENV["metrics_port"]]) != health_port
    parse_duration(rendered.settings[ENV["liveness_timeout"]])  # a valid duration


def test_grace_period_outlasts_a_graceful_stop(rendered: Rendered) -> None:
    """A stop waits up to stop_timeout for the handlers in flight, up to stop_timeout for the
    cancelled ones, then gives the final checkpoint stop_timeout: the kubelet must wait longer
    before its SIGKILL."""
    stop_timeout = parse_duration(rendered.settings[ENV["stop_timeout"]])
    grace = rendered.pod["terminationGracePeriodSeconds"]
    assert grace > 3 * stop_timeout, (grace, stop_timeout)


def test_the_api_key_comes_from_a_secret_never_inlined(rendered: Rendered) -> None:
    api_key = rendered.env[ENV["api_key"]]
    assert set(api_key) == {"name", "valueFrom"}
    ref = api_key["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "memory-service-processor-credentials", "key": "api-key"}
    assert not [d for d in rendered.docs if d["kind"] == "Secret"]  # created by kubectl, not here
    secrets = {ENV["api_key"], ENV["bearer_token"]}
    assert not secrets & set(rendered.settings)
    for name, entry in rendered.env.items():
        if name in secrets:
            assert "value" not in entry


def test_pods_run_unprivileged(rendered: Rendered) -> None:
    pod_security = rendered.pod["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] != 0
    container = rendered.container["securityContext"]
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False and container["capabilities"]["drop"] == ["ALL"]
    assert rendered.pod["automountServiceAccountToken"] is False
    resources = rendered.container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]


def test_service_and_disruption_budget_select_the_pods(rendered: Rendered) -> None:
    labels = rendered.statefulset["spec"]["template"]["metadata"]["labels"]
    assert rendered.statefulset["spec"]["selector"]["matchLabels"] == labels
    assert rendered.pdb["spec"]["selector"]["matchLabels"] == labels
    assert rendered.pdb["spec"]["maxUnavailable"] == 1
    assert rendered.service["spec"]["selector"] == labels
    assert rendered.service["spec"]["clusterIP"] == "None"
    assert rendered.statefulset["spec"]["serviceName"] == rendered.service["metadata"]["name"]


def test_file_checkpoints_component_puts_the_store_on_a_volume_per_shard(tmp_path: Path) -> None:
    tree = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, tree)
    overlay = tree / "overlays" / "with-file-checkpoints"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../example]\ncomponents: [../../components/file-checkpoints]\n"
    )
    r = Rendered(render(overlay))
    (claim,) = r.statefulset["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in r.container["volumeMounts"]}
    store = r.settings[ENV["checkpoint_store"]]
    assert store.startswith("file:") and store[len("file:"):].startswith(mounts[claim["metadata"]["name"]] + "/")
    assert r.container["securityContext"]["readOnlyRootFilesystem"] is True  # the volume is writable, / is not
    assert r.pod["securityContext"]["fsGroup"] == r.pod["securityContext"]["runAsGroup"]


def test_dockerfile_installs_the_wheel_and_runs_unprivileged(example: Rendered) -> None:
    text = DOCKERFILE.read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert re.match(r"FROM python:\$\{PYTHON_VERSION\}-slim$", [x for x in lines if x.startswith("FROM")][0])
    scripts = re.search(r"\[project\.scripts\]\s*\n(\S+)\s*=", (REPO / "pyproject.toml").read_text())
    assert scripts is not None
    assert f'ENTRYPOINT ["{scripts.group(1)}", "run"]' in lines
    assert "COPY *.whl /tmp/dist/" in lines and "--only-binary :all:" in text
    assert not re.search(r"\b(cargo|rustup|rustc|maturin)\b", "\n".join(lines))
    (user,) = [x.split()[1] for x in lines if x.startswith("USER ")]
    uid = int(user.split(":")[0])
    assert uid != 0 and uid == example.pod["securityContext"]["runAsUser"]
    exposed = {int(p) for x in lines if x.startswith("EXPOSE ") for p in x.split()[1:]}
    assert {p["containerPort"] for p in example.container["ports"]} <= exposed


def test_check_deploy_script_is_in_ci() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert "scripts/check-deploy" in ci
    assert (REPO / "scripts" / "check-deploy").stat().st_mode & 0o111
