"""deploy/: the container recipe and the Kubernetes manifests say only what syncd accepts (issue 23 item 3).

No container runtime or cluster runs here, so the recipes are checked against the code:

* every manifest parses (PyYAML), and every command a container or probe runs is parsed by
  the real argument parser of ``syncd`` (``syncd.cli.core.parse``) or ``syncd-gateway``
  (``gateway.main.parse_args``), after Kubernetes' ``$(VAR)`` expansion (each VAR defined);
* every environment variable a container gets (its own, and every key of the ConfigMaps and
  Secrets it loads) is one syncd reads: the names are recorded while ``Config.from_env``, the
  store's credential lookup, the mount-mode default and the SDK client read them, not listed
  here; the ConfigMap's values make a valid Config;
* every HTTP probe asks a route the process serves on that port (the agent's status listener,
  the gateway's app), and every path a process writes lies on a mounted volume;
* the agent and the tasks see the volumes and the socket at the same paths, the example Job
  runs as a uid the agent admits, the gateways' ``--self-url``s are exactly SYNCD_GATEWAY;
* the Containerfile installs what those commands need: syncd with the ``mount`` extra (which
  exists), the console scripts they call, fuse3 for lazy mounts, on Python slim.

The example Job's script also runs for real, as uid nobody, against a real agent.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import shlex
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from syncd.config import Config

from .agentutil import Agents, latest_files

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted(p for p in (DEPLOY / "kubernetes").glob("*.yaml") if p.name != "kustomization.yaml")
CONTAINERFILE = DEPLOY / "Containerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
WORKLOADS = {"DaemonSet", "Deployment", "StatefulSet", "Job"}
# what Kubernetes' downward API would give the $(VAR)s the manifests use
DOWNWARD = {"status.podIP": "10.1.2.3", "metadata.name": "syncd-gateway-0", "metadata.namespace": "syncd"}
NOBODY = 65534


# ---------------------------------------------------------------- reading the manifests

def documents() -> list[dict[str, Any]]:
    docs = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append(doc)
    return docs


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} in deploy/kubernetes, found {len(found)}"
    return found[0]


def data_of(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, str]:
    doc = named(docs, kind, name)
    return {**doc.get("data", {}), **doc.get("stringData", {})}


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def workload(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}"
    return found[0]


def container_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as Kubernetes would build it (downward API values made up)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef") or source.get("secretRef")
        kind = "ConfigMap" if "configMapRef" in source else "Secret"
        env.update(data_of(docs, kind, ref["name"]))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        src = item["valueFrom"]
        if "fieldRef" in src:
            env[item["name"]] = DOWNWARD[src["fieldRef"]["fieldPath"]]
        else:
            ref = src.get("configMapKeyRef") or src.get("secretKeyRef")
            kind = "ConfigMap" if "configMapKeyRef" in src else "Secret"
            data = data_of(docs, kind, ref["name"])
            assert ref["key"] in data, f"{kind} {ref['name']} has no key {ref['key']}"
            env[item["name"]] = data[ref["key"]]
    return env


def downward_names(container: dict[str, Any]) -> set[str]:
    return {i["name"] for i in container.get("env", []) if "fieldRef" in i.get("valueFrom", {})}


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' ``$(VAR)`` expansion; a VAR the container does not define fails the test."""
    def one(match: re.Match[str]) -> str:
        assert match.group(1) in env, f"$({match.group(1)}) is not defined in the container's env"
        return env[match.group(1)]
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, a) for a in args]


def every_container(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            for container in pod_spec(doc)["containers"]:
                yield doc, container


# ---------------------------------------------------------------- what syncd accepts, read off the code

class Recording(dict[str, str]):
    """A mapping that remembers every name looked up in it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:    # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)


def names_syncd_reads(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    from syncd.mount.spawn import default_mode
    from syncd.sdk.volume import AgentClient
    from syncd.store.obstore import _credentials
    config_env = Recording()
    Config.from_env(config_env)
    creds = Recording({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "t"})
    _credentials(creds)
    process_env = Recording(os.environ)
    monkeypatch.setattr(os, "environ", process_env)
    default_mode()
    AgentClient()
    monkeypatch.undo()
    return config_env.read | creds.read | process_env.read


def routes(app: Any) -> set[str]:
    return {r.resource.canonical for r in app.router.routes() if r.resource is not None}


def served_routes(argv: list[str], port: int) -> set[str]:
    """The routes the process ``argv`` serves on ``port`` (empty if it serves nothing there)."""
    if argv[:2] == ["syncd", "agent"]:
        from types import SimpleNamespace

        from syncd.agent.api import make_status_app
        from syncd.cli.core import parse
        addr = parse(argv[1:]).status_addr
        return routes(make_status_app(SimpleNamespace(views=None))) if addr and addr[1] == port else set()  # type: ignore[arg-type]
    if argv[0] == "syncd-gateway":
        from gateway.app import create_app
        from gateway.auth import Tokens
        from gateway.main import parse_args
        return routes(create_app(None, Tokens(None))) if parse_args(argv[1:]).port == port else set()  # type: ignore[arg-type]
    return set()


def check_command(argv: list[str]) -> Any:
    """Parse ``argv`` as the program it names would; returns the parsed arguments."""
    program = argv[0]
    assert program in PYPROJECT["project"]["scripts"] or program in ("python", "python3"), \
        f"{program!r} is not a console script of syncd (pyproject [project.scripts]) nor python"
    try:
        if program == "syncd":
            from syncd.cli.core import COMMANDS, parse
            args = parse(argv[1:])
            assert args._command in COMMANDS
            return args
        if program == "syncd-gateway":
            from gateway.main import parse_args
            return parse_args(argv[1:])
    except SystemExit as exc:
        raise AssertionError(f"{shlex.join(argv)}: rejected by its argument parser (exit {exc.code})") from exc
    assert argv[1] == "-c", f"{shlex.join(argv)}: only `python -c SCRIPT` is checked"
    tree = ast.parse(argv[2])
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "syncd":
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
    return None


def mounted(container: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The volumeMount ``path`` lies on (the deepest), or None."""
    best = None
    for m in container.get("volumeMounts", []):
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/"):
            if best is None or len(m["mountPath"]) > len(best["mountPath"]):
                best = m
    return best


def host_path(doc: dict[str, Any], container: dict[str, Any], path: str) -> str:
    """The node directory that ``path`` in ``container`` is (it must lie on a hostPath volume)."""
    mount = mounted(container, path)
    assert mount is not None, f"{path} is on no volume of {container['name']}"
    volume = next(v for v in pod_spec(doc)["volumes"] if v["name"] == mount["name"])
    assert "hostPath" in volume, f"{path} of {container['name']} is not on a hostPath volume"
    return str(Path(volume["hostPath"]["path"]) / Path(path).relative_to(mount["mountPath"]))


# ---------------------------------------------------------------- the tests

def test_every_manifest_parses_and_names_a_known_kind() -> None:
    assert {p.name for p in MANIFESTS} >= {"config.yaml", "agent.yaml", "gateway.yaml", "example-job.yaml"}
    docs = documents()
    for doc in docs:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc
        assert doc["kind"] in WORKLOADS | {"Namespace", "ConfigMap", "Secret", "Service"}
    kustomize = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    assert {DEPLOY / "kubernetes" / r for r in kustomize["resources"]} == set(MANIFESTS) - {
        DEPLOY / "kubernetes" / "example-job.yaml"}
    assert {d["kind"] for d in docs} >= WORKLOADS - {"Deployment"} | {"ConfigMap", "Secret", "Service"}


def test_every_command_flag_and_variable_is_one_syncd_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = documents()
    accepted = names_syncd_reads(monkeypatch)
    assert {"SYNCD_BUCKET", "SYNCD_ALLOW_UIDS", "SYNCD_MOUNT_MODE", "AWS_SECRET_ACCESS_KEY"} <= accepted
    checked = 0
    for doc, container in every_container(docs):
        env = container_env(docs, container)
        unknown = set(env) - accepted - downward_names(container)
        assert not unknown, f"{doc['kind']} {container['name']}: syncd reads no {sorted(unknown)}"
        Config.from_env(env)                        # the values are valid, not only the names
        argv = expand(container["command"] + container.get("args", []), env)
        check_command(argv)
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
            probe = container.get(kind)
            if probe is None:
                continue
            if "exec" in probe:
                check_command(expand(probe["exec"]["command"], env))
            if "httpGet" in probe:
                port = probe["httpGet"]["port"]
                port = ports.get(port, port) if isinstance(port, str) else port
                assert port in ports.values(), f"{container['name']} {kind}: port {port} is not a containerPort"
                assert probe["httpGet"]["path"] in served_routes(argv, port), \
                    f"{container['name']} {kind}: {argv[0]} serves no {probe['httpGet']['path']} on {port}"
            checked += 1
        checked += 1
    assert checked >= 7      # agent, gateway, job; and their probes


def test_the_agent_and_its_tasks_agree_on_paths_uids_and_the_pool() -> None:
    docs = documents()
    agent_doc = workload(docs, "DaemonSet")
    agent = pod_spec(agent_doc)["containers"][0]
    env = container_env(docs, agent)
    config = Config.from_env(env)
    assert check_command(expand(agent["command"], env)).status_addr is not None
    assert agent.get("readinessProbe"), "the agent has no readiness probe"
    assert mounted(agent, "/dev/fuse") is not None, "lazy mounts need /dev/fuse"
    # every directory the agent writes lies on the node, so it survives the pod
    for path in (config.root, config.cache_dir, config.state_dir, config.socket.parent):
        host_path(agent_doc, agent, str(path))
    assert mounted(agent, str(config.root))["mountPropagation"] == "Bidirectional"   # type: ignore[index]

    job_doc = workload(docs, "Job")
    task = pod_spec(job_doc)["containers"][0]
    for path in (config.root, config.socket.parent):   # the paths the agent hands out exist in the task
        assert host_path(job_doc, task, str(path)) == host_path(agent_doc, agent, str(path)), path
    assert container_env(docs, task)["SYNCD_SOCKET"] == str(config.socket)
    who = pod_spec(job_doc)["securityContext"]
    assert who["runAsUser"] in config.allow_uids or who["runAsGroup"] == config.allow_group
    assert config.file_owner() == (who["runAsUser"], who["runAsGroup"])   # the files are the task's

    pool_doc = workload(docs, "StatefulSet")
    gateway = pod_spec(pool_doc)["containers"][0]
    assert gateway.get("readinessProbe"), "the gateway has no readiness probe"
    service = named(docs, "Service", pool_doc["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"       # one DNS name per gateway
    genv = container_env(docs, gateway)
    self_urls = []
    for i in range(pool_doc["spec"]["replicas"]):
        args = check_command(expand(gateway["command"], {**genv, "POD_NAME": f"{pool_doc['metadata']['name']}-{i}"}))
        self_urls.append(args.self_url)
        for path in (args.cache_dir, args.tokens):
            assert mounted(gateway, str(path)) is not None, f"the gateway's {path} is on no volume"
    assert tuple(self_urls) == config.gateways == Config.from_env(genv).gateways


def containerfile() -> tuple[str, list[tuple[str, str]]]:
    """The text and the (instruction, arguments) of the final stage."""
    text = CONTAINERFILE.read_text()
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    stages: list[list[tuple[str, str]]] = []
    for line in lines:
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((word.upper(), rest))
    return text, stages[-1]


def test_the_container_recipe_installs_what_the_commands_need() -> None:
    text, final = containerfile()
    version = re.search(r"ARG PYTHON_VERSION=(\d+)\.(\d+)", text)
    assert version, "the Python version is an ARG with a default"
    wanted = tuple(int(x) for x in re.findall(r"\d+", PYPROJECT["project"]["requires-python"]))
    assert (int(version.group(1)), int(version.group(2))) >= wanted
    assert re.fullmatch(r"python:\$\{PYTHON_VERSION\}-slim\S*", final[0][1].split()[0]), final[0]
    runs = " ".join(rest for word, rest in final if word == "RUN")
    apt = re.search(r"apt-get install ([^&]*)", runs)
    assert apt and "fuse3" in apt.group(1).split(), "the final image needs fuse3 (fusermount3, libfuse3)"
    install = re.search(r'pip install [^&]*"syncd\[([a-z,]+)\]"', runs)
    assert install, "the final image installs syncd with its extras"
    extras = set(install.group(1).split(","))
    assert "mount" in extras and extras <= set(PYPROJECT["project"]["optional-dependencies"])
    # the build stage builds those same extras from the sources it copied: the packages and
    # what pyproject.toml needs to build (its readme)
    assert f'".[{install.group(1)}]"' in text
    copied = {src for line in re.findall(r"^COPY (?!--)(.+?) \S+$", text, re.MULTILINE) for src in line.split()}
    assert {"pyproject.toml", PYPROJECT["project"]["readme"], "syncd", "gateway"} <= copied
    # the commands the manifests run are the console scripts this installs (or python)
    programs = {c["command"][0] for _, c in every_container(documents())}
    assert programs <= set(PYPROJECT["project"]["scripts"]) | {"python"}
    env = dict(re.findall(r"(SYNCD_[A-Z_]+)=(\S+)", " ".join(rest for word, rest in final if word == "ENV")))
    config = data_of(documents(), "ConfigMap", "syncd-config")
    assert env and all(config[k] == v for k, v in env.items()), (env, config)


def run_as(uid: int, script: str, env: dict[str, str]) -> tuple[int, str]:
    """Run ``script`` in a forked child dropped to ``uid`` (the modules it imports are already
    loaded here, so the venv need not be readable by that uid); its exit code and output."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                  # the child: never returns into pytest
        code = 1
        try:
            os.close(read)
            sys.stdout = sys.stderr = os.fdopen(write, "w", buffering=1)   # pytest captures the real ones
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.environ.clear()
            os.environ.update(env)
            exec(compile(script, "<the Job's script>", "exec"), {"__name__": "__main__"})
            code = 0
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the Job's task as uid nobody under a root agent")
def test_the_example_jobs_task_runs_as_another_uid(config: Config, open_dir: Path, agents: Agents) -> None:
    import syncd.sdk.volume  # noqa: F401  (what the script imports, loaded before the fork)
    job = pod_spec(workload(documents(), "Job"))["containers"][0]
    script = job["command"][2]
    worker = config.replace(root=open_dir / "volumes", socket=open_dir / "run" / "syncd.sock",
                            allow_uids=(NOBODY,), allow_group=NOBODY)
    agents.start(worker)
    code, out = run_as(NOBODY, script, {"SYNCD_SOCKET": str(worker.socket), "SYNCD_OWNER": worker.owner,
                                        "HOME": "/"})
    assert code == 0, out[-3000:]
    assert "written by a Job as uid 1000" in out, out
    files = [p for p in latest_files(config, "my-volume") if p.startswith("k8s-example/log_")]
    assert len(files) == 1
    assert (worker.root / "my-volume" / files[0]).stat().st_uid == NOBODY
