"""The security claims of docs/SECURITY.md about the agent's socket and the gateway, on real processes.

Each test backs one or a few claims of that document, which names it. The agent
runs as a real ``syncd agent`` subprocess and the gateway as a real aiohttp
server (in-process, or ``python -m gateway`` where the bind address matters),
both against the session's SeaweedFS.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import aiohttp
import pytest

from gateway.auth import Tokens
from gateway.main import parse_args
from syncd.config import Config
from syncd.errors import LocalIOError
from syncd.format.manifest import Entry
from syncd.local import fs as localfs
from syncd.sdk.volume import _UnixConnection
from syncd.store.devserver import CREDENTIALS

from .agentutil import Agents
from .gatewayutil import commit_tree, serve_gateway

NOBODY = 65534
GW_TOKEN = "gw-secret-0f3a9c"
TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}
ALICE = {"Authorization": "Bearer tok-alice"}


# ---------------------------------------------------------------- helpers

def raw(socket_path: Path, method: str, path: str, owner: str | None = None) -> tuple[int, str]:
    """One request on the agent's socket with the path sent as is (no client-side quoting)."""
    conn = _UnixConnection(str(socket_path), 60)
    try:
        conn.request(method, path, headers={"X-Syncd-Owner": owner} if owner else {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def listening_inet(pid: int) -> list[str]:
    """``addr:port`` (hex, as in /proc/net/tcp) of every TCP socket ``pid`` listens on."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:     # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:   # 0A: LISTEN
                    found.append(cols[1])
    return found


def connect_as(uid: int, socket_path: Path) -> str:
    """Try to connect to a Unix socket as ``uid``; the errno name, or "connected"."""
    code = ("import socket,sys,errno\ns=socket.socket(socket.AF_UNIX)\n"
            "try:\n s.connect(sys.argv[1]); print('connected')\n"
            "except OSError as e: print(errno.errorcode[e.errno])\n")
    out = subprocess.run(["/usr/bin/python3", "-c", code, str(socket_path)], user=uid, capture_output=True,
                         text=True, timeout=30, check=True)
    return out.stdout.strip()


# ---------------------------------------------------------------- the agent's socket

@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another uid")
def test_agent_socket_is_private_to_its_uid(config: Config, agents: Agents, open_dir: Path) -> None:
    sock = open_dir / "run" / "syncd.sock"
    old = os.umask(0)   # the worst case: the agent is started with a permissive umask
    try:
        agent = agents.start(config.replace(socket=sock))
    finally:
        os.umask(old)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700       # the directory it created
    assert connect_as(NOBODY, sock) == "EACCES"
    sock.parent.chmod(0o755)    # an operator's /run: only the socket's own mode protects it now
    assert connect_as(NOBODY, sock) == "EACCES"
    assert connect_as(0, sock) == "connected"
    assert agent.proc is not None and listening_inet(agent.proc.pid) == []   # no TCP port at all


def test_agent_refuses_other_owners_and_bad_names(config: Config, agents: Agents, tmp_path: Path) -> None:
    agent = agents.start(config)
    sock = config.socket
    for method, path in [("GET", "/v1/status"), ("GET", "/v1/volumes"), ("POST", "/v1/volumes/v/mount"),
                         ("DELETE", "/v1/volumes/v"), ("GET", "/metrics")]:
        status, body = raw(sock, method, path, owner="bob")
        assert (status, json.loads(body)["error"]) == (403, "PermissionDenied"), (method, path)
    assert agent.status()["mounts"] == []
    outside = tmp_path / "x"
    for name in ["..", "%2E%2E", "..%2Fx", "%2E%2E%2Fx", "a%2Fb", "%2Fetc", ".hidden", "a%00b", "x" * 64,
                 "%2E", "-rf", "a%20b"]:
        for method, action in [("POST", "/mount"), ("POST", "/commit"), ("POST", "/reload"),
                               ("POST", "/unmount"), ("GET", ""), ("DELETE", "")]:
            status, body = raw(sock, method, f"/v1/volumes/{name}{action}", owner="alice")
            assert (status, json.loads(body)["error"]) == (400, "InvalidName"), (name, action, body)
    # a path with a real "/" or ".." segment does not even match a route
    for path in ["/v1/volumes/../../x/mount", "/v1/volumes/a/b/mount", "/v1/volumes//mount"]:
        assert raw(sock, "POST", path, owner="alice")[0] in (400, 404)
    assert not outside.exists()
    # nothing but the agent's own lock on its root (tests/test_agent_rootlock.py)
    assert not config.root.exists() or os.listdir(config.root) == [".agent.lock"]
    assert agent.status()["mounts"] == []
    # a valid name is mounted at SYNCD_ROOT/<name>, and nowhere a request chooses
    status, body = raw(sock, "POST", "/v1/volumes/good/mount", owner="alice")
    assert status == 200 and json.loads(body)["path"] == str(config.root / "good")
    assert sorted(os.listdir(config.root)) == [".agent.lock", "good"]


def test_nothing_on_the_socket_reveals_credentials(config: Config, agents: Agents, tmp_path: Path) -> None:
    worker = config.replace(gateways=("http://user:gw-url-secret@127.0.0.1:9",), gateway_token=GW_TOKEN)
    agents.start(worker)
    sock = config.socket
    bodies = [raw(sock, "POST", "/v1/volumes/vol/mount", owner="alice")]
    (config.root / "vol" / "f.txt").write_text("hello")
    bodies += [raw(sock, "POST", "/v1/volumes/vol/commit", owner="alice"),
               raw(sock, "POST", "/v1/volumes/vol/reload", owner="alice")]
    for method, path, owner in [("GET", "/v1/status", None), ("GET", "/v1/volumes", None),
                                ("GET", "/v1/volumes/vol", None), ("GET", "/metrics", None),
                                ("GET", "/v1/volumes/nope", None), ("POST", "/v1/volumes/..x/mount", None),
                                ("GET", "/v1/status", "bob"), ("GET", "/v1/nowhere", None)]:
        bodies.append(raw(sock, method, path, owner))
    assert [s for s, _ in bodies[:3]] == [200, 200, 200]
    text = "\n".join(b for _, b in bodies)
    assert 'gateway="http://127.0.0.1:9"' in text      # the gateway is named (metrics), without its userinfo
    # (the access key id is an identifier, not a secret; the secret key and the tokens are)
    secrets = [GW_TOKEN, "gw-url-secret",
               os.environ.get("AWS_SECRET_ACCESS_KEY", CREDENTIALS["AWS_SECRET_ACCESS_KEY"])]
    for secret in secrets:
        assert secret not in text


# ---------------------------------------------------------------- a task swapping a file for a symlink

def test_chmod_and_utime_never_follow_a_symlink_swapped_in_racing(tmp_path: Path) -> None:
    """set_meta (what hydrate calls for files whose content is current) against a racing swapper."""
    root, outside = tmp_path / "vol", tmp_path / "outside"
    root.mkdir()
    outside.write_bytes(b"secret")
    outside.chmod(0o600)
    os.utime(outside, ns=(1_000_000_000, 1_000_000_000))
    before = outside.stat()
    (root / "link").symlink_to(outside)
    (root / "file").write_bytes(b"data")
    entry = Entry(path="f", kind="file", mode=0o777, mtime_ns=2_000_000_000_000_000_000, size=4)
    stop = threading.Event()

    def swap() -> None:
        spare = root / "spare"
        while not stop.is_set():
            os.link(root / "link", spare, follow_symlinks=False)
            os.replace(spare, root / "f")             # f is now the symlink
            os.link(root / "file", spare)
            os.replace(spare, root / "f")             # f is a regular file again

    swapper = threading.Thread(target=swap)
    swapper.start()
    outcomes = {"file": 0, "refused": 0}
    try:
        for _ in range(3000):
            try:
                localfs.set_meta(root, "f", entry)
                outcomes["file"] += 1
            except LocalIOError as exc:
                assert "symlink" in str(exc) or "No such file" in str(exc)
                outcomes["refused"] += 1
    finally:
        stop.set()
        swapper.join()
    after = outside.stat()
    assert (stat.S_IMODE(after.st_mode), after.st_mtime_ns) == (0o600, before.st_mtime_ns)
    assert outcomes["file"] > 0 and outcomes["refused"] > 0    # the race really happened both ways
    assert stat.S_IMODE((root / "file").stat().st_mode) == 0o777


# ---------------------------------------------------------------- the gateway

def test_gateway_binds_loopback_by_default(config: Config, tmp_path: Path) -> None:
    assert parse_args([]).host == "127.0.0.1"
    tokens = tmp_path / "tokens"
    tokens.write_text("tok-alice alice\n")
    env = {**os.environ, "SYNCD_S3_ENDPOINT": config.s3_endpoint or "", "SYNCD_BUCKET": config.bucket,
           "SYNCD_PREFIX": config.prefix}
    refused = subprocess.run([sys.executable, "-m", "gateway", "--port", "0"], env=env, capture_output=True,
                             text=True, timeout=30)
    assert refused.returncode != 0 and "--no-auth" in refused.stderr   # no tokens: refuses to start
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--tokens", str(tokens), "--port", "0",
                             "--cache-dir", str(tmp_path / "gwc")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("syncd-gateway listening on http://127.0.0.1:"), line
        [address] = listening_inet(proc.pid)
        assert address.startswith("0100007F:")        # 127.0.0.1, little-endian hex
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_tokens_are_compared_in_constant_time_against_every_grant(monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    tokens = Tokens({"t1": "alice", "t2": "bob", "t3": "carol"})
    for header in ["Bearer t1", "Bearer t3", "Bearer nope"]:
        calls.clear()
        tokens.owner_of(header)
        assert len(calls) == 3          # no early exit: the time does not tell which token matched
    assert tokens.owner_of("Bearer t2") == "bob" and tokens.owner_of("bearer  t2 ") == "bob"
    assert tokens.owner_of("Basic t2") is None and tokens.owner_of("Bearer t") is None


async def test_gateway_requires_a_valid_token(config: Config, tmp_path: Path) -> None:
    _, snap = await commit_tree(config, tmp_path / "src", small_files=4, large_size=1_500_000)
    ref = next(r for e in snap.entries.values() for r in e.chunks if r.pack is None)
    url_paths = [f"/v1/alice/vol/chunks/{ref.id}", f"/v1/alice/vol/packs/{ref.id}"]
    async with serve_gateway(config, tmp_path, tokens=TOKENS) as gw, aiohttp.ClientSession() as http:
        for headers in [{}, {"Authorization": ""}, {"Authorization": "Bearer"}, {"Authorization": "Bearer "},
                        {"Authorization": "Bearer tok-alic"}, {"Authorization": "Bearer tok-alice2"},
                        {"Authorization": "Basic tok-alice"}, {"Authorization": "tok-alice"},
                        {"Authorization": "Bearer alice"}]:
            for path in url_paths:
                for method in ("GET", "HEAD"):
                    async with http.request(method, gw.url + path, headers=headers) as resp:
                        assert resp.status == 401, (headers, path, method)
                        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            async with http.post(f"{gw.url}/v1/alice/vol/warm", json={}, headers=headers) as resp:
                assert resp.status == 401
        assert sum(gw.origin.calls.values()) == 0    # nothing was read
        async with http.get(gw.url + url_paths[0], headers=ALICE) as resp:
            assert resp.status == 200 and len(await resp.read()) == ref.size


async def test_a_token_reads_only_its_owners_volumes(config: Config, tmp_path: Path) -> None:
    bob = config.replace(owner="bob", state_dir=tmp_path / "bob-state", cache_dir=tmp_path / "bob-cache")
    sid, snap = await commit_tree(bob, tmp_path / "src", small_files=4, large_size=1_500_000)
    chunk = next(r for e in snap.entries.values() for r in e.chunks if r.pack is None)
    pack = next(r.pack for e in snap.entries.values() for r in e.chunks if r.pack is not None)
    async with serve_gateway(config, tmp_path, tokens=TOKENS) as gw, aiohttp.ClientSession() as http:
        for path in [f"/v1/bob/vol/chunks/{chunk.id}", f"/v1/bob/vol/packs/{pack}"]:
            async with http.get(gw.url + path, headers=ALICE) as resp:
                assert resp.status == 403
        for body in [{}, {"snapshot": sid}, {"chunks": [chunk.id]}]:
            async with http.post(f"{gw.url}/v1/bob/vol/warm", json=body, headers=ALICE) as resp:
                assert resp.status == 403               # alice cannot make the gateway fetch bob's objects
        assert sum(gw.origin.calls.values()) == 0
        assert not any(k for k in gw.origin.keys if "/bob/" in k)
        bob_token = {"Authorization": "Bearer tok-bob"}
        async with http.post(f"{gw.url}/v1/bob/vol/warm", json={"chunks": [chunk.id]}, headers=bob_token) as resp:
            assert resp.status == 200 and (await resp.json())["fetched"] == 1
        async with http.get(f"{gw.url}/v1/bob/vol/chunks/{chunk.id}", headers=ALICE) as resp:
            assert resp.status == 403                   # cached or not, the answer is the same
        # HEAD and snapshots are read routes under the same token check (issue 14)
        for path, token, status in [("/v1/bob/vol/HEAD", ALICE, 403), (f"/v1/bob/vol/snapshots/{sid}", ALICE, 403),
                                    ("/v1/bob/vol/HEAD", bob_token, 200)]:
            async with http.get(gw.url + path, headers=token) as resp:
                assert resp.status == status, path
        # a token has no write or list route
        for method, path in [("PUT", f"/v1/bob/vol/chunks/{chunk.id}"), ("DELETE", f"/v1/bob/vol/chunks/{chunk.id}"),
                             ("GET", "/v1/bob"), ("GET", "/v1/bob/vol"), ("PUT", "/v1/bob/vol/HEAD"),
                             ("GET", f"/v1/bob/vol/snapshots/{chunk.id}"), ("GET", "/v1/bob/vol/warm")]:
            async with http.request(method, gw.url + path, headers=bob_token) as resp:
                assert resp.status in (404, 405), (method, path)


async def raw_http(url: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"",
                   method: str = "GET") -> tuple[int, bytes]:
    """One HTTP/1.1 request with ``path`` on the wire exactly as given (no client normalisation)."""
    import asyncio
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    headers = {"Content-Length": str(len(body)), **(headers or {})}
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close",
             *(f"{k}: {v}" for k, v in headers.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    rest = await reader.readexactly(length[0]) if length else await reader.read()
    writer.close()      # not waiting for the server to close: it may linger reading an unwanted body
    return int(head.split()[1]), rest


async def test_only_chunks_and_packs_of_the_named_volume_are_reachable(config: Config, tmp_path: Path) -> None:
    sid, snap = await commit_tree(config, tmp_path / "src", small_files=4, large_size=1_500_000)
    cid = next(r for e in snap.entries.values() for r in e.chunks if r.pack is None).id
    attempts = [
        "/v1/alice/vol/chunks/../HEAD",
        "/v1/alice/vol/chunks/..%2FHEAD", f"/v1/alice/vol%2Fchunks/{cid}", f"/v1/alice/..%2Fbob/chunks/{cid}",
        f"/v1/alice/%2E%2E/chunks/{cid}", f"/v1/alice/vol/chunks/{cid}%2F..%2F..%2FHEAD",
        f"/v1/alice/vol/chunks/{cid.upper()}", f"/v1/alice/vol/chunks/{cid}0", f"/v1/alice/vol/chunks/{cid * 500}",
        f"/v1/alice/vol/chunks/{cid[:-1]}", f"/v1/alice/vol/chunks/{cid}%00", "/v1/alice/vol/chunks/%2E%2E",
        f"/v1/alice/vol/chunks/{cid[:2]}/{cid}", f"/v1/alice/.vol/chunks/{cid}", f"/v1/alice/{'v' * 64}/chunks/{cid}",
        f"/v1/alice/vol/packs/{sid}", f"/v1/alice/vol/chunks/{sid}",     # a snapshot id in an object route
        "/v1/alice/vol/" + "a" * 100_000,
    ]
    async with serve_gateway(config, tmp_path, tokens=TOKENS) as gw:
        for path in attempts:
            status, body = await raw_http(gw.url, path, ALICE)
            assert status in (400, 404, 405, 414, 431), (path[:200], status, body[:200])
        status, _ = await raw_http(gw.url, f"/v1/alice/../bob/vol/chunks/{cid}", ALICE)
        assert status in (403, 404)         # normalised to bob's path: not alice's to read
        for path in ("/v1/alice/vol/HEAD", f"/v1/alice/vol/snapshots/{sid}"):  # served since issue 14
            assert (await raw_http(gw.url, path, ALICE))[0] == 200
        keys = set(gw.origin.keys)
        assert keys == {f"{config.prefix}/alice/vol/packs/{sid}", f"{config.prefix}/alice/vol/chunks/{sid[:2]}/{sid}",
                        f"{config.prefix}/alice/vol/HEAD", f"{config.prefix}/alice/vol/snapshots/{sid}"}
    async with serve_gateway(config, tmp_path, name="open") as gw:   # --no-auth: the owner is not pinned
        for path in [f"/v1/%2E%2E/vol/chunks/{cid}", f"/v1/alice%2Fvol/x/chunks/{cid}", f"/v1/-x/vol/chunks/{cid}",
                     f"/v1/%2E%2E%2F%2E%2E/vol/chunks/{cid}"]:
            status, _ = await raw_http(gw.url, path)
            assert status in (400, 404), path
        for body in [b'{"chunks": ["../../HEAD"]}', b'{"snapshot": "../HEAD"}', b'{"packs": "x"}', b"[1]", b"{"]:
            status, _ = await raw_http(gw.url, "/v1/alice/vol/warm", {"Content-Type": "application/json"}, body,
                                       "POST")
            assert status == 400, body
        assert sum(gw.origin.calls.values()) == 0


async def test_the_gateway_cache_is_keyed_per_owner(config: Config, tmp_path: Path) -> None:
    _, snap = await commit_tree(config, tmp_path / "src", small_files=4, large_size=1_500_000)
    cid = next(r for e in snap.entries.values() for r in e.chunks if r.pack is None).id
    bob = config.replace(owner="bob", state_dir=tmp_path / "bob-state", cache_dir=tmp_path / "bob-cache")
    await commit_tree(bob, tmp_path / "bob-src", small_files=2, large_size=10)   # bob has a "vol", not the chunk
    bob_token = {"Authorization": "Bearer tok-bob"}
    async with serve_gateway(config, tmp_path, tokens=TOKENS) as gw:
        assert (await raw_http(gw.url, f"/v1/alice/vol/chunks/{cid}", ALICE))[0] == 200   # now cached
        # bob knows the id: the cached copy is alice's, bob's own prefix does not have it
        assert (await raw_http(gw.url, f"/v1/bob/vol/chunks/{cid}", bob_token))[0] == 404
        bob_key = f"{config.prefix}/bob/vol/chunks/{cid[:2]}/{cid}"
        assert gw.origin.keys[bob_key] == 1                 # asked bob's prefix, not alice's cache
        status, body = await raw_http(gw.url, "/v1/bob/vol/warm", {**bob_token, "Content-Type": "application/json"},
                                      json.dumps({"chunks": [cid]}).encode(), "POST")
        assert status == 200 and json.loads(body)["cached"] == 0 and json.loads(body)["failed"]


async def test_healthz_and_metrics_reveal_no_names_or_tokens(config: Config, tmp_path: Path) -> None:
    sid, snap = await commit_tree(config, tmp_path / "src", small_files=4, large_size=1_500_000)
    cid = next(r for e in snap.entries.values() for r in e.chunks if r.pack is None).id
    async with serve_gateway(config, tmp_path, tokens=TOKENS) as gw:
        for path, headers in [(f"/v1/alice/vol/chunks/{cid}", ALICE), (f"/v1/bob/vol/chunks/{cid}", ALICE),
                              (f"/v1/alice/vol/chunks/{sid}", ALICE), (f"/v1/alice/vol/chunks/{cid}", {}),
                              (f"/v1/alice/..%2Fx/chunks/{cid}", ALICE)]:
            await raw_http(gw.url, path, headers)
        await raw_http(gw.url, "/v1/alice/vol/warm", {**ALICE, "Content-Type": "application/json"}, b"{}", "POST")
        assert await raw_http(gw.url, "/healthz") == (200, b"ok\n")
        status, text = await raw_http(gw.url, "/metrics")
    assert status == 200 and b"syncd_gateway_requests_total" in text
    for secret in ["alice", "bob", "vol", "tok-", cid, sid, config.prefix, "Bearer"]:
        assert secret.encode() not in text, secret
    from prometheus_client.parser import text_string_to_metric_families
    labels = {k for family in text_string_to_metric_families(text.decode()) for s in family.samples for k in s.labels}
    assert labels <= {"kind", "code", "le"}


async def test_ranges_headers_and_bodies_are_bounded(config: Config, tmp_path: Path) -> None:
    _, snap = await commit_tree(config, tmp_path / "src", small_files=4, large_size=1_500_000)
    ref = next(r for e in snap.entries.values() for r in e.chunks if r.pack is None)
    path = f"/v1/alice/vol/chunks/{ref.id}"
    async with serve_gateway(config, tmp_path, tokens=TOKENS) as gw:
        status, body = await raw_http(gw.url, path, {**ALICE, "Range": "bytes=10-" + "9" * 40})
        assert status == 206 and len(body) == ref.size - 10        # clamped to the object, not allocated
        for bad in ["bytes=" + "9" * 40 + "-", "bytes=0-0,2-2,4-4", "bytes=" + ",".join(["0-1"] * 1000),
                    "bytes=5-1", "items=0-1", "bytes=abc"]:
            status, body = await raw_http(gw.url, path, {**ALICE, "Range": bad})
            assert status == 416, (bad[:40], status)          # one range at most, never a multipart body
            assert len(body) < 1000
        status, _ = await raw_http(gw.url, path, {**ALICE, "X-Pad": "x" * 100_000})
        assert status in (400, 431)                                  # aiohttp's 8 KiB field limit
        status, _ = await raw_http(gw.url, path, {f"X-H{i}": "x" * 100 for i in range(1000)})
        assert status in (400, 431)                                  # and its limit on header count
        # an unauthenticated client announcing a huge body is answered without it being read
        status, _ = await raw_http(gw.url, "/v1/alice/vol/warm", {"Content-Length": str(10**12)}, b"",
                                   "POST")
        assert status == 401
        too_big = b'{"chunks": ["' + b"0" * (65 * 1024 * 1024) + b'"]}'
        status, _ = await raw_http(gw.url, "/v1/alice/vol/warm", ALICE, too_big, "POST")
        assert status == 413                                         # the warm body limit (64 MiB)


async def test_made_up_owner_names_cost_no_file_descriptors(config: Config, tmp_path: Path) -> None:
    """With --no-auth anyone picks the owner; each name used to open a diskcache (4 fds): 300 names
    exhausted a 1024-fd limit. Now every owner shares one handle."""
    await commit_tree(config, tmp_path / "src", small_files=2, large_size=10)
    async with serve_gateway(config, tmp_path, name="open") as gw:
        await raw_http(gw.url, f"/v1/alice/vol/chunks/{'0' * 32}")          # the cache is open now
        before = len(os.listdir("/proc/self/fd"))
        for i in range(200):
            assert (await raw_http(gw.url, f"/v1/o{i}/vol/chunks/{'0' * 32}"))[0] == 404
        assert len(os.listdir("/proc/self/fd")) <= before + 8
