"""Covalent: the hooks fail fast without an agent; the product page's workflow on real Covalent.

The real-Covalent test is opt-in: covalent 0.240 must not be installed into the test
virtualenv (it upgrades botocore past aiobotocore's pin), so it runs in its own venv::

    python -m venv /tmp/covenv
    /tmp/covenv/bin/pip install "covalent==0.240.0" "fastapi<0.132" xxhash
    /tmp/covenv/bin/pip install --no-deps -e .
    SYNCD_COVALENT_PYTHON=/tmp/covenv/bin/python .venv/bin/python -m pytest -m covalent tests/test_covalent.py

It starts ``covalent start`` with a private HOME and *without* any SYNCD_* variable (as a
new user would), one ``syncd agent``, and runs examples/covalent_workflow.py twice.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from syncd.config import Config
from syncd.errors import AgentUnavailable
from syncd.sdk.covalent import commit_hook, mount_hook

from .agentutil import Agents, env_for, latest_files

ROOT = Path(__file__).resolve().parents[1]


def test_hooks_fail_at_once_without_an_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYNCD_SOCKET", raising=False)
    monkeypatch.setenv("SYNCD_AGENT_WAIT", "30")          # would be 30 s of retries if we waited
    started = time.monotonic()
    with pytest.raises(AgentUnavailable, match="SYNCD_SOCKET is not set.*covalent start"):
        mount_hook("my_volume", str(tmp_path / "no.sock"))
    with pytest.raises(AgentUnavailable):
        commit_hook("my_volume", "create_new_files", str(tmp_path / "no.sock"))
    assert time.monotonic() - started < 5


def test_syncd_covalent_is_the_sdk_implementation_and_needs_no_covalent_to_import() -> None:
    # the name users type (issue 23, item 5); a fresh interpreter, so nothing imported covalent before
    code = ("import sys; from syncd.covalent import dispatch, get_result, volume_electron; "
            "import syncd.sdk.covalent as impl; "
            "assert (dispatch, get_result, volume_electron) == (impl.dispatch, impl.get_result, impl.volume_electron); "
            "print('covalent' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.covalent
def test_product_page_workflow_on_real_covalent(config: Config, agents: Agents, tmp_path: Path) -> None:
    python = os.environ.get("SYNCD_COVALENT_PYTHON")
    if not python:
        pytest.skip("set SYNCD_COVALENT_PYTHON to a python with covalent 0.240 (see this module's docstring)")
    covalent = str(Path(python).parent / "covalent")
    agents.start(config)
    port = _free_port()
    home = tmp_path / "home"
    home.mkdir()
    server_env = {"PATH": os.environ["PATH"], "HOME": str(home), "COVALENT_SVC_PORT": str(port)}
    subprocess.run([covalent, "start", "-p", str(port), "--no-cluster"], env=server_env, check=True,
                   capture_output=True, timeout=120)
    try:
        env = {**env_for(config), **server_env}
        runs = []
        for _ in range(2):
            done = subprocess.run([python, str(ROOT / "examples" / "covalent_workflow.py")], env=env,
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        script = tmp_path / "own_hooks.py"
        script.write_text(OWN_HOOKS)
        done = subprocess.run([python, str(script)], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        own = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run([covalent, "stop"], env=server_env, capture_output=True, timeout=120)
    assert [r["status"] for r in runs] == ["COMPLETED", "COMPLETED"], runs
    assert [len(r["files"]) for r in runs] == [3, 6]
    assert own["status"] == "COMPLETED" and own["result"] == "hook ran\n", own
    files = latest_files(config, "my_volume")
    assert len(files) == 7 and "own/hooked.txt" in files


# An electron with hooks of its own: it still gets the volume (mounted before its own hook runs,
# committed after), which covalent's lattice-level hooks would not give it.
OWN_HOOKS = """
import json, os
import covalent as ct
from syncd import Volume
from syncd.covalent import dispatch, get_result

def own_hook():
    vol = Volume("my_volume")
    os.makedirs(vol / "own", exist_ok=True)
    (vol / "own" / "hooked.txt").write_text("hook ran\\n")

@ct.electron(executor="local", call_before=[ct.DepsCall(own_hook)])
def hooked():
    return (Volume("my_volume") / "own" / "hooked.txt").read_text()

@ct.lattice(executor="local", workflow_executor="local")
def wf():
    return hooked()

result = get_result(dispatch(wf, volume="my_volume")(), wait=True)
print(json.dumps({"status": str(result.status), "error": result.error or "", "result": result.result}))
"""
