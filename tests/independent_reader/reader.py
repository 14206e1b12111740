"""A second reader of syncd volumes, written from docs/FORMAT.md alone.

It imports nothing of syncd: only the standard library, ``xxhash``,
``zstandard`` (format 3's compressed chunks) and ``botocore`` as a plain S3
client. Given a bucket, prefix, owner and volume it reads HEAD, the snapshot
it names (version 1, 2 or 3), every tree, verifies
everything by its id, refuses what the document says to refuse, and writes
the volume into a directory: directories first, files from verified chunks,
then symlinks, then directory modes and mtimes, deepest first.

    python reader.py --endpoint URL --bucket B --prefix P --owner O VOLUME OUT

Credentials come from the usual AWS environment variables.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
import zlib
from typing import Any

import botocore.session
import xxhash
import zstandard

ID = re.compile(r"^[0-9a-f]{32}\Z")


class Bad(Exception):
    """The volume breaks a rule of FORMAT.md."""


def xid(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def need(cond: bool, why: str) -> None:
    if not cond:
        raise Bad(why)


def is_id(v: object) -> bool:
    return isinstance(v, str) and ID.match(v) is not None


def is_int(v: object, lo: int, hi: int) -> bool:
    return type(v) is int and lo <= v <= hi


# FORMAT.md §3: canonical JSON. Parse strictly, re-encode, compare.
def canonical_loads(data: bytes, what: str) -> Any:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        need(len({k for k, _ in items}) == len(items), f"{what}: duplicate key")
        return dict(items)

    def no_float(text: str) -> Any:
        raise Bad(f"{what}: non-integer number {text}")

    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=pairs, parse_float=no_float,
                           parse_constant=no_float)
        again = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")
    except (UnicodeError, ValueError) as exc:
        raise Bad(f"{what}: not JSON: {exc}") from exc
    need(again == data, f"{what}: not canonical")
    return value


class Volume:
    def __init__(self, client: Any, bucket: str, prefix: str, owner: str, volume: str) -> None:
        self.s3, self.bucket, self.volume, self.owner = client, bucket, volume, owner
        self.base = f"{prefix}/{owner}/{volume}/" if prefix else f"{owner}/{volume}/"
        self.gets = 0

    def get(self, key: str, start: int | None = None, size: int | None = None) -> bytes:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self.base + key}
        if start is not None and size is not None:
            args["Range"] = f"bytes={start}-{start + size - 1}"
        self.gets += 1
        body: bytes = self.s3.get_object(**args)["Body"].read()
        if size is not None:
            need(len(body) == size, f"{key}: range {start}+{size} not held in full")
        return body

    # §7
    def head(self) -> dict[str, Any]:
        doc = json.loads(self.get("HEAD"))
        need(doc.get("format") in (1, 2, 3) and type(doc.get("format")) is int, "HEAD format")
        need(doc["snapshot"] is None or is_id(doc["snapshot"]), "HEAD snapshot id")
        return doc

    # §6 and §13: a list of (path bytes, entry dict with bytes names/targets)
    def entries(self, sid: str) -> list[tuple[bytes, dict[str, Any]]]:
        data = self.get(f"snapshots/{sid}")
        need(xid(data) == sid, "snapshot hash")
        if data[:1] == b"{":
            return self._v2(data)
        return self._v1(data)

    def _v1(self, data: bytes) -> list[tuple[bytes, dict[str, Any]]]:
        d = zlib.decompressobj()
        text = d.decompress(data, 1 << 31)
        need(not d.unconsumed_tail, "v1 snapshot too large")
        doc = json.loads(text)
        need(doc.get("format") == 1 and doc["volume"] == self.volume and doc["owner"] == self.owner, "v1 header")
        out = []
        for e in doc["entries"]:
            raw = e["path"].encode("utf-8", "surrogateescape")   # §13: lone surrogates stand for bytes
            parts = raw.split(b"/")
            need(all(p not in (b"", b".", b"..") for p in parts) and b"\0" not in raw, "v1 path")
            entry = dict(e)
            if e["type"] == "symlink":
                entry["target"] = e["target"].encode("utf-8", "surrogateescape")
            out.append((raw, entry))
        return out

    def _v2(self, data: bytes) -> list[tuple[bytes, dict[str, Any]]]:
        doc = canonical_loads(data, "snapshot")
        need(set(doc) == {"format", "volume", "owner", "seq", "parent", "created_ns", "writer", "message",
                          "root", "files", "dirs", "bytes", "links"}, "snapshot fields")
        need(doc["format"] in (2, 3) and doc["volume"] == self.volume and doc["owner"] == self.owner,
             "snapshot header")
        out: list[tuple[bytes, dict[str, Any]]] = []
        level = [(b"", doc["root"])]
        while level:
            nxt = []
            for prefix, ref in level:
                for entry in self.tree(ref):
                    path = prefix + b"/" + entry["name"] if prefix else entry["name"]
                    need(len(path) <= 4096 and len(out) < 10_000_000, "path or entry count")
                    out.append((path, entry))
                    if entry["type"] == "dir":
                        nxt.append((path, entry["tree"]))
            level = nxt
        return out

    # §5
    def tree(self, ref: Any) -> list[dict[str, Any]]:
        need(isinstance(ref, list) and len(ref) == 4 and is_id(ref[0]) and is_id(ref[1])
             and is_int(ref[2], 0, 1 << 50) and is_int(ref[3], 1, 256 << 20), "tree reference")
        stored = self.get(f"trees/{ref[1]}", ref[2], ref[3])
        d = zlib.decompressobj()
        data = d.decompress(stored, 256 << 20)
        need(d.eof and not d.unused_data and not d.unconsumed_tail, "tree zlib stream")
        need(xid(data) == ref[0], "tree hash")
        doc = canonical_loads(data, "tree")
        need(set(doc) == {"entries", "format"} and doc["format"] in (2, 3), "tree header")
        lengths = (2, 4, 5) if doc["format"] == 3 else (2, 4)     # §4: five elements, format 3 only
        fields = {"file": {"type", "mode", "mtime_ns", "size", "chunks"},
                  "dir": {"type", "mode", "mtime_ns", "tree", "files", "dirs", "bytes", "links"},
                  "symlink": {"type", "mode", "mtime_ns"}}
        out, last = [], None
        for raw in doc["entries"]:
            e = dict(raw)
            e["name"] = take_bytes(e, "name")
            if e.get("type") == "symlink":
                e["target"] = take_bytes(e, "target")
                need(0 < len(e["target"]) <= 4096 and b"\0" not in e["target"]
                     and not e["target"].startswith(b"/"), "symlink target")
            need(e.get("type") in fields and set(e) - {"name", "target"} == fields[e["type"]], "entry fields")
            name = e["name"]
            need(0 < len(name) <= 255 and b"/" not in name and b"\0" not in name and name not in (b".", b".."),
                 "name")
            need(last is None or last < name, "entries sorted by name bytes")
            last = name
            need(is_int(e["mode"], 0, 0o7777) and is_int(e["mtime_ns"], -(1 << 62), 1 << 62), "mode/mtime")
            if e["type"] == "file":
                need(is_int(e["size"], 0, 1 << 50), "size")
                for c in e["chunks"]:
                    need(isinstance(c, list) and len(c) in lengths and is_id(c[0]) and is_int(c[1], 1, 5 << 30)
                         and (len(c) == 2 or (is_id(c[2]) and is_int(c[3], 0, 1 << 50))), "chunk reference")
                    need(len(c) < 5 or (is_int(c[4], 1, c[1] - 1) and c[1] <= 16 << 20), "compressed chunk bounds")
                need(sum(c[1] for c in e["chunks"]) == e["size"], "chunks add up")
            out.append(e)
        return out

    def chunk(self, ref: list[Any]) -> bytes:
        if len(ref) == 2:
            data = self.get(f"chunks/{ref[0][:2]}/{ref[0]}")
        elif len(ref) == 4:
            data = self.get(f"packs/{ref[2]}", ref[3], ref[1])
        else:   # §4: one zstd frame declaring exactly `size` bytes, nothing after it; inflate no more
            stored = self.get(f"packs/{ref[2]}", ref[3], ref[4])
            try:
                declared = zstandard.get_frame_parameters(stored).content_size
                need(declared == ref[1], f"chunk {ref[0]}: frame declares {declared} bytes")
                data = zstandard.ZstdDecompressor().decompress(stored, max_output_size=ref[1], allow_extra_data=False)
            except zstandard.ZstdError as exc:
                raise Bad(f"chunk {ref[0]}: not one zstd frame: {exc}") from exc
        need(len(data) == ref[1] and xid(data) == ref[0], f"chunk {ref[0]} does not verify")
        return data


def take_bytes(e: dict[str, Any], key: str) -> bytes:
    plain, b64 = e.pop(key, None), e.pop(key + "_b64", None)
    need((plain is None) != (b64 is None), f"exactly one of {key}, {key}_b64")
    if plain is not None:
        need(isinstance(plain, str), key)
        return plain.encode("utf-8")
    raw = base64.b64decode(b64, validate=True)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw
    raise Bad(f"{key}_b64 holds valid UTF-8")


# §6: resolve a link through the snapshot's own links; None if it leaves the volume
def resolve(links: dict[bytes, bytes], where: list[bytes], target: bytes, budget: list[int]) -> list[bytes] | None:
    if target.startswith(b"/"):
        return None
    stack = list(where)
    for part in target.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if not stack:
                return None
            stack.pop()
            continue
        stack.append(part)
        here = b"/".join(stack)
        if here in links:
            budget[0] -= 1
            if budget[0] < 0:
                return None
            got = resolve(links, stack[:-1], links[here], budget)
            if got is None:
                return None
            stack = got
    return stack


def validate(entries: list[tuple[bytes, dict[str, Any]]]) -> None:
    kinds = {p: e["type"] for p, e in entries}
    need(len(kinds) == len(entries), "a path appears twice")
    for path, _ in entries:
        parent = path.rpartition(b"/")[0]
        need(not parent or kinds.get(parent) == "dir", "parent is not a directory")
    links = {p: e["target"] for p, e in entries if e["type"] == "symlink"}
    for path, target in links.items():
        need(resolve(links, path.split(b"/")[:-1], target, [40]) is not None, f"symlink {path!r} leaves the volume")


def write(vol: Volume, entries: list[tuple[bytes, dict[str, Any]]], out: bytes) -> None:
    """§10: files under a temporary name, renamed; dirs' mode and mtime after their children."""
    os.makedirs(out, exist_ok=True)
    ordered = sorted(entries, key=lambda pe: pe[0])
    for path, e in ordered:
        if e["type"] == "dir":
            os.makedirs(os.path.join(out, path), 0o700, exist_ok=True)
    for path, e in ordered:
        full = os.path.join(out, path)
        if e["type"] == "file":
            tmp = os.path.join(os.path.dirname(full), b".syncd-tmp-independent")
            with open(tmp, "wb") as f:
                for ref in e["chunks"]:
                    f.write(vol.chunk(ref))
            os.chmod(tmp, e["mode"] & 0o777)
            os.utime(tmp, ns=(e["mtime_ns"], e["mtime_ns"]))
            os.replace(tmp, full)
        elif e["type"] == "symlink":
            os.symlink(e["target"], full)
    for path, e in sorted((pe for pe in entries if pe[1]["type"] == "dir"), key=lambda pe: -pe[0].count(b"/")):
        full = os.path.join(out, path)
        os.chmod(full, e["mode"] & 0o777)
        os.utime(full, ns=(e["mtime_ns"], e["mtime_ns"]))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    for flag in ("--endpoint", "--bucket", "--prefix", "--owner", "--snapshot"):
        ap.add_argument(flag)
    ap.add_argument("volume")
    ap.add_argument("out")
    args = ap.parse_args(argv)
    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=args.endpoint, region_name=os.environ.get("AWS_REGION", "us-east-1"))
    vol = Volume(client, args.bucket, args.prefix or "", args.owner, args.volume)
    sid = args.snapshot or vol.head()["snapshot"]
    entries = vol.entries(sid) if sid else []
    validate(entries)
    write(vol, entries, os.fsencode(args.out))
    print(json.dumps({"snapshot": sid, "entries": len(entries), "gets": vol.gets}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Bad as exc:
        print(f"refused: {exc}", file=sys.stderr)
        sys.exit(4)
