"""Tasks that run as another uid than the agent (issue 23 item 4; docs/AGENT.md, docs/SECURITY.md).

The usual Kubernetes shape: a root agent sidecar, tasks as uid 1000. Here the agent is a
real ``syncd agent`` running as root with ``SYNCD_ALLOW_UIDS=65534`` (or a group), and the
task is a separate process dropped to uid ``nobody`` (``subprocess.run(user=..., group=...)``)
running only the standard library: it talks HTTP to the socket and uses plain file calls,
as task code of any language would. Each test then reads the volume back from the bucket.

Needs root (to be the agent and to drop to nobody); the lazy test also needs FUSE.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from syncd.config import Config
from syncd.errors import PermissionDenied
from syncd.sdk.volume import AgentClient

from .agentutil import Agents, latest_files
from .mountutil import fuse_missing

NOBODY = 65534
STRANGER = 4242          # a uid nobody named
GROUP = 4343             # a group the operator names in the group test
PYTHON = "/usr/bin/python3"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a root agent, tasks dropped to other uids")

# The task: standard library only (the test venv need not be readable by other uids).
TASK = r"""
import errno, http.client, json, os, socket, sys

SOCK, VOLUME, ACT = sys.argv[1], sys.argv[2], sys.argv[3]

class Conn(http.client.HTTPConnection):
    def __init__(self):
        super().__init__("localhost", timeout=300)
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(SOCK)

def call(method, url, body=None):
    conn = Conn()
    try:
        conn.request(method, url, body=None if body is None else json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()

def errno_of(fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]

out = {"uid": os.getuid(), "gid": os.getgid()}
if ACT in ("eager", "lazy"):
    status, mounted = call("POST", f"/v1/volumes/{VOLUME}/mount", {"mode": ACT})
    assert status == 200, mounted
    path = mounted["path"]
    out["listing"] = sorted(os.listdir(path))
    out["sub_listing"] = sorted(os.listdir(os.path.join(path, "sub")))
    with open(os.path.join(path, "existing.txt")) as f:
        out["old"] = f.read()
    with open(os.path.join(path, "existing.txt"), "a") as f:         # edit a hydrated file in place
        f.write("a line the task added\n")
    os.mkdir(os.path.join(path, "sub", "made"))                     # in a directory the volume had
    with open(os.path.join(path, "sub", "made", "x.txt"), "w") as f:
        f.write("made by the task\n")
    with open(os.path.join(path, "new.txt"), "w") as f:
        f.write("new from the task\n")
    out["new_owner"] = os.stat(os.path.join(path, "new.txt")).st_uid
    out["existing_owner"] = os.stat(os.path.join(path, "existing.txt")).st_uid
    status, out["commit"] = call("POST", f"/v1/volumes/{VOLUME}/commit", {"message": "by the task"})
    assert status == 200, out["commit"]
    if ACT == "eager":
        status, sub = call("POST", f"/v1/volumes/{VOLUME}/mount", {"sub_path": "deep/er"})
        assert status == 200, sub
        with open(os.path.join(sub["path"], "leaf.txt"), "w") as f:
            f.write("in a sub-path the agent made\n")
        os.symlink(sys.argv[4], os.path.join(path, "evil"))        # plant a link to a root-only place
        out["through_link"] = call("POST", f"/v1/volumes/{VOLUME}/mount", {"sub_path": "evil/planted"})
        status, out["commit2"] = call("POST", f"/v1/volumes/{VOLUME}/commit", {"message": "sub-path"})
        assert status == 200, out["commit2"]
elif ACT == "view":
    status, view = call("POST", f"/v1/volumes/{VOLUME}/mount", {"read_only": True})
    assert status == 200, view
    path = view["path"]
    with open(os.path.join(path, "existing.txt")) as f:
        out["read"] = f.read()
    out["write"] = errno_of(lambda: open(os.path.join(path, "existing.txt"), "a").write("x"))
    out["create"] = errno_of(lambda: open(os.path.join(path, "planted.txt"), "w").write("x"))
    out["chmod"] = errno_of(lambda: os.chmod(os.path.join(path, "existing.txt"), 0o666))
elif ACT == "top":
    status, mounted = call("POST", f"/v1/volumes/{VOLUME}/mount", {})
    assert status == 200, mounted
    with open(os.path.join(mounted["path"], "existing.txt")) as f:
        out["old"] = f.read()
    with open(os.path.join(mounted["path"], "new.txt"), "w") as f:
        f.write("new from a member of the group\n")
    out["edit"] = errno_of(lambda: open(os.path.join(mounted["path"], "existing.txt"), "a").write("x"))
    status, out["commit"] = call("POST", f"/v1/volumes/{VOLUME}/commit", {"message": "by the task"})
    assert status == 200, out["commit"]
elif ACT == "status":
    out["status"] = call("GET", "/v1/status")
elif ACT == "write-into":
    out["write"] = errno_of(lambda: open(os.path.join(sys.argv[4], "intruder.txt"), "w").write("x"))
    out["edit"] = errno_of(lambda: open(os.path.join(sys.argv[4], "existing.txt"), "a").write("x"))
print(json.dumps(out))
"""


def run_task(uid: int, gid: int, *args: str, groups: tuple[int, ...] = ()) -> dict[str, Any]:
    done = subprocess.run([PYTHON, "-c", TASK, *args], user=uid, group=gid, extra_groups=list(groups),
                          capture_output=True, text=True, timeout=300, cwd="/")
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def seed(config: Config, src: Path) -> None:
    """Volume "vol": existing.txt and sub/inner.txt, committed as a user would."""
    import asyncio

    from syncd.engine.commit import commit
    from syncd.engine.wiring import open_engine
    (src / "sub").mkdir(parents=True)
    (src / "existing.txt").write_text("from the volume\n")
    (src / "sub" / "inner.txt").write_text("inner\n")

    async def go() -> None:
        async with open_engine(config) as engine:
            await commit(engine, "vol", src)
    asyncio.run(go())


def shared_worker(config: Config, open_dir: Path, **allow: Any) -> Config:
    return config.replace(root=open_dir / "volumes", socket=open_dir / "run" / "syncd.sock", **allow)


def test_an_eager_mount_serves_a_task_of_another_uid(config: Config, open_dir: Path, agents: Agents,
                                                    tmp_path: Path) -> None:
    seed(config, tmp_path / "src")
    worker = shared_worker(config, open_dir, allow_uids=(NOBODY,))
    agents.start(worker)
    sock = worker.socket
    assert stat.S_IMODE(sock.stat().st_mode) == 0o666               # a mode cannot name uids: the peer check does
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o755
    secret = open_dir / "root-only"
    secret.mkdir(mode=0o700)

    out = run_task(NOBODY, NOBODY, str(sock), "vol", "eager", str(secret))
    assert out["listing"] == ["existing.txt", "sub"] and out["sub_listing"] == ["inner.txt"]
    assert out["old"] == "from the volume\n"
    assert out["new_owner"] == NOBODY and out["existing_owner"] == NOBODY   # hydrated files are the task's
    assert out["commit"]["changed"] >= 3
    mount = worker.root / "vol"
    assert (mount.stat().st_uid, (mount / "sub").stat().st_uid) == (NOBODY, NOBODY)
    assert (mount / "deep" / "er").stat().st_uid == NOBODY           # the sub-path the agent created
    # a sub-path through the task's symlink is refused, and nothing is made behind the link
    status, body = out["through_link"]
    assert (status, body["error"]) == (400, "ConfigError") and "symlink" in body["message"]
    assert os.listdir(secret) == []
    assert worker.root.stat().st_uid == 0 and not worker.root.stat().st_mode & 0o022   # SYNCD_ROOT stays private

    files = latest_files(config, "vol")
    assert files["existing.txt"] == len("from the volume\na line the task added\n")
    assert {"new.txt", "sub/made/x.txt", "sub/inner.txt", "deep/er/leaf.txt"} <= set(files)


def test_a_read_only_view_stays_read_only_for_another_uid(config: Config, open_dir: Path, agents: Agents,
                                                          tmp_path: Path) -> None:
    seed(config, tmp_path / "src")
    worker = shared_worker(config, open_dir, allow_uids=(NOBODY,))
    agents.start(worker)
    out = run_task(NOBODY, NOBODY, str(worker.socket), "vol", "view")
    assert out["read"] == "from the volume\n"
    assert out["write"] in ("EACCES", "EROFS") and out["create"] in ("EACCES", "EROFS")
    assert out["chmod"] in ("EPERM", "EROFS")              # the view is the agent's, not the task's
    assert set(latest_files(config, "vol")) == {"existing.txt", "sub/inner.txt"}


def test_a_lazy_mount_serves_a_task_of_another_uid(config: Config, open_dir: Path, agents: Agents,
                                                   tmp_path: Path) -> None:
    if (why := fuse_missing()) is not None:
        pytest.skip(why)
    seed(config, tmp_path / "src")
    worker = shared_worker(config, open_dir, allow_uids=(NOBODY,))
    agent = agents.start(worker)
    try:
        out = run_task(NOBODY, NOBODY, str(worker.socket), "vol", "lazy")
        assert out["listing"] == ["existing.txt", "sub"] and out["sub_listing"] == ["inner.txt"]
        assert out["old"] == "from the volume\n"
        assert out["new_owner"] == NOBODY and out["existing_owner"] == NOBODY
        assert out["commit"]["changed"] >= 3 and out["commit"]["pending"] is False
        assert agent.mount_status("vol")["mode"] == "lazy"
        # another uid on the worker: the mount's modes apply to it (0644 files, 0755 directories)
        other = run_task(STRANGER, STRANGER, str(worker.socket), "vol", "write-into", str(worker.root / "vol"))
        assert (other["write"], other["edit"]) == ("EACCES", "EACCES")
        assert agent.terminate() == 0
    finally:
        agents.kill_all()
    files = latest_files(config, "vol")
    assert files["existing.txt"] == len("from the volume\na line the task added\n")
    assert {"new.txt", "sub/made/x.txt", "sub/inner.txt"} <= set(files)
    assert "intruder.txt" not in files


def test_a_uid_the_operator_did_not_name_is_refused(config: Config, open_dir: Path, agents: Agents) -> None:
    worker = shared_worker(config, open_dir, allow_uids=(NOBODY,))
    agent = agents.start(worker)
    out = run_task(STRANGER, STRANGER, str(worker.socket), "vol", "status")
    status, body = out["status"]
    assert (status, body["error"]) == (403, "PermissionDenied")
    assert "uid 4242" in body["message"] and "SYNCD_ALLOW_UIDS" in body["message"]
    assert run_task(NOBODY, NOBODY, str(worker.socket), "vol", "status")["status"][0] == 200
    assert agent.status()["mounts"] == [] and "refused a request" in agent.log()


def test_a_named_group_admits_its_members_and_no_one_else(config: Config, open_dir: Path, agents: Agents,
                                                          tmp_path: Path) -> None:
    seed(config, tmp_path / "src")
    worker = shared_worker(config, open_dir, allow_group=GROUP)
    agents.start(worker)
    sock = worker.socket
    assert (stat.S_IMODE(sock.stat().st_mode), sock.stat().st_gid) == (0o660, GROUP)
    # a member by a supplementary group (SO_PEERGROUPS), as Kubernetes' supplementalGroups makes one
    member = run_task(STRANGER, STRANGER, str(sock), "vol", "status", groups=(GROUP,))
    assert member["status"][0] == 200
    assert run_task(STRANGER + 1, GROUP, str(sock), "vol", "status")["status"][0] == 200   # by its primary gid
    # a uid outside the group cannot even connect (the socket's mode), and the SDK says why
    pid = os.fork()
    if pid == 0:                      # the child drops to nobody and uses the SDK as a task would
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            AgentClient(sock, connect_wait=0).call("GET", "/v1/status")
        except PermissionDenied as exc:
            code = 0 if "SYNCD_ALLOW_GROUP" in str(exc) and f"uid {NOBODY}" in str(exc) else 2
        finally:
            os._exit(code)
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0
    # a member may create files in the mount (0775, the group's); files keep the volume's modes,
    # so a 0644 file is edited in place only by its owner (name the uid for that: docs/AGENT.md)
    out = run_task(STRANGER, STRANGER, str(sock), "vol", "top", groups=(GROUP,))
    mount = worker.root / "vol"
    assert (mount.stat().st_uid, mount.stat().st_gid, stat.S_IMODE(mount.stat().st_mode)) == (0, GROUP, 0o775)
    assert (mount / "existing.txt").stat().st_gid == GROUP and out["old"] == "from the volume\n"
    assert out["edit"] == "EACCES" and out["commit"]["changed"] == 1
    assert "new.txt" in latest_files(config, "vol")


def test_without_allowed_uids_nothing_changes(config: Config) -> None:
    assert config.file_owner() is None
    env = {"SYNCD_ALLOW_UIDS": "1000, nobody", "SYNCD_ALLOW_GROUP": "0"}
    named = Config.from_env(env)
    assert named.allow_uids == (1000, NOBODY) and named.allow_group == 0
    assert named.file_owner() == (1000, 0)
    from syncd.errors import ConfigError
    with pytest.raises(ConfigError, match="no user named"):
        Config.from_env({"SYNCD_ALLOW_UIDS": "no-such-user-here"})
    with pytest.raises(ConfigError, match="one group"):
        Config.from_env({"SYNCD_ALLOW_GROUP": "1,2"})
