"""The inode table: one namespace merged from the snapshot (lower) and local changes.

Every name the kernel has seen is a :class:`Node` with a stable inode number.
A directory's children are loaded from the :class:`~syncd.mount.listing.Listing`
the first time anyone looks inside it (``children is None`` until then), and
from then on live only here, so ``stat``/``readdir`` never touch the network
and a directory nobody opens costs nothing. A renamed directory that was never
listed keeps ``lower_path``, the place in the snapshot its children come from,
so renaming a large unlisted tree is one dict operation. A directory is
listed once however many requests ask at once (one in-flight load per
directory), and every node made from a listing is noted in ``fresh`` with the
entry it came from and the snapshot directory it was listed in: publish.py's
base for the next commit (what the snapshot had there). A read-only mount
never commits, so it keeps no ``fresh`` (``keep_fresh`` False).

Listing a directory is the cold ``find``'s inner loop, once per entry, so it
makes one object per entry and nothing else: the listing hands over the
snapshot's own entries, named by their bare names (no copy under the full
path), and the node is built with one positional call; the full path of an
entry is made only where one is needed (a subdirectory's ``lower_path``, a
commit's base, a rebase's lookup of the old node).

File nodes carry their content as ``chunks`` (the snapshot's references) plus,
once written, an upper-layer file (data.py decides which byte comes from
where). ``version`` counts data changes: publish.py reads a file's bytes and
checks the version did not move meanwhile, and reuses the chunk list it
committed last time (``committed``) while the version stays put.

Namespace operations raise :class:`FsError` with an errno; fs.py turns it into
the kernel's answer. Nodes that leave the tree (unlink, rename over, rmdir,
reload) stay in ``inodes`` while the kernel or an open file still refers to
them, so an open file keeps its content until it is closed.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from syncd.format.manifest import ChunkRef, Entry, Kind
from syncd.mount.listing import Listing

ROOT_INODE = 1


class FsError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(errno.errorcode.get(code, str(code)))
        self.errno = code


@dataclass(eq=False, slots=True)
class Node:
    # Tree._load builds nodes with positional arguments: a new field goes after ``lower_limit``
    ino: int
    kind: Kind
    mode: int                        # permission bits only
    mtime_ns: int
    name: str = ""
    parent: Node | None = None
    size: int = 0
    target: str | None = None
    chunks: tuple[ChunkRef, ...] = ()          # lower content (files)
    lower_path: str | None = None              # dirs: where unloaded children live in the snapshot
    children: dict[str, Node] | None = None    # dirs: None until listed
    ctime_ns: int = 0
    upper: bool = False              # data.py keeps an upper-layer file for this node
    lower_limit: int = 0             # bytes below this may still come from ``chunks``
    copied: set[int] | None = None   # ``present``, made on first use: most nodes are never written
    version: int = 0
    committed: tuple[int, Entry] | None = None       # (version, entry) published last
    lookups: int = 0
    opens: int = 0
    attached: bool = True

    @property
    def present(self) -> set[int]:
        """Indexes of the chunks copied into the upper file."""
        if self.copied is None:
            self.copied = set()
        return self.copied

    def st_mode(self) -> int:
        return _S_IF[self.kind] | (self.mode & 0o7777)

    def touch(self) -> None:
        self.mtime_ns = self.ctime_ns = time.time_ns()


_S_IF = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}
Fresh = tuple[Node, str, Entry]     # a listed node, the snapshot directory it was listed in, its entry


class Tree:
    def __init__(self, listing: Listing, root_mode: int = 0o755, keep_fresh: bool = True) -> None:
        self.listing = listing
        self.inodes: dict[int, Node] = {}
        self._next = ROOT_INODE
        self.root = self._new("dir", root_mode, time.time_ns(), lower_path="")
        self.changes = 0   # bumped by every mutation: the write-back's "dirty" signal
        self.released: list[Node] = []      # forgotten nodes with upper files for data.py to free
        self._reuse: dict[str, Node] = {}   # during rebase: the old nodes by path
        self._loading: dict[int, asyncio.Future[dict[str, Node]]] = {}
        # nodes loaded from the listing since publish.py last looked, with the entry they came from
        self.keep_fresh = keep_fresh
        self.fresh: list[Fresh] = []

    def _new(self, kind: Kind, mode: int, mtime_ns: int, **kw: object) -> Node:
        node = Node(self._next, kind, mode, mtime_ns, ctime_ns=mtime_ns, **kw)  # type: ignore[arg-type]
        self._next += 1
        self.inodes[node.ino] = node
        return node

    def get(self, ino: int) -> Node:
        node = self.inodes.get(ino)
        if node is None:
            raise FsError(errno.ESTALE)
        return node

    @staticmethod
    def path(node: Node) -> str:
        parts: list[str] = []
        while node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return "/".join(reversed(parts))

    async def children(self, node: Node) -> dict[str, Node]:
        if node.kind != "dir":
            raise FsError(errno.ENOTDIR)
        if node.children is not None:
            return node.children
        task = self._loading.get(node.ino)
        if task is None:                    # one listing per directory, however many ask at once
            task = asyncio.ensure_future(self._load(node))
            self._loading[node.ino] = task
            task.add_done_callback(lambda _: self._loading.pop(node.ino, None))
        return await asyncio.shield(task)

    async def _load(self, node: Node) -> dict[str, Node]:
        while True:
            listing = self.listing
            lower = node.lower_path or ""
            entries = await listing.list_dir(lower)
            if node.children is not None:
                return node.children
            if listing is self.listing:     # else a rebase moved to another snapshot meanwhile
                break
        loaded: dict[str, Node] = {}
        reuse, inodes, attached = self._reuse, self.inodes, node.attached
        fresh = self.fresh if self.keep_fresh and attached else None
        ino = self._next
        for entry in entries:            # entry.path is the bare name (listing.py)
            name, kind = entry.path, entry.kind
            child = self._reused(f"{lower}/{name}" if lower else name, entry) if reuse else None
            if child is None:
                if kind == "file":
                    child = Node(ino, kind, entry.mode, entry.mtime_ns, name, node, entry.size, None, entry.chunks,
                                 None, None, entry.mtime_ns, False, entry.size)
                elif kind == "dir":
                    child = Node(ino, kind, entry.mode, entry.mtime_ns, name, node, 0, None, (),
                                 f"{lower}/{name}" if lower else name, None, entry.mtime_ns)
                else:
                    child = Node(ino, kind, entry.mode, entry.mtime_ns, name, node, len(os.fsencode(entry.target or "")),
                                 entry.target, (), None, None, entry.mtime_ns)
                inodes[ino] = child
                ino += 1
            else:
                child.name, child.parent = name, node
            loaded[name] = child
            if fresh is not None:
                fresh.append((child, lower, entry))
            elif not attached:              # listed after it left the namespace (a rebase)
                child.attached = False
        self._next = ino
        node.children = loaded
        return loaded

    async def lookup(self, parent: Node, name: str) -> Node:
        child = (await self.children(parent)).get(name)
        if child is None:
            raise FsError(errno.ENOENT)
        return child

    async def add(self, parent: Node, name: str, kind: Kind, mode: int, target: str | None = None) -> Node:
        children = await self.children(parent)
        if name in children:
            raise FsError(errno.EEXIST)
        now = time.time_ns()
        if kind == "dir":
            node = self._new("dir", mode, now, children={})
        elif kind == "symlink":
            node = self._new("symlink", 0o777, now, target=target, size=len(os.fsencode(target or "")))
        else:
            node = self._new("file", mode, now, upper=False)
        node.name, node.parent = name, parent
        children[name] = node
        parent.touch()
        self.changes += 1
        return node

    def detach(self, node: Node) -> None:
        """``node`` left the namespace; forget it once nobody refers to it."""
        node.attached = False
        for child in (node.children or {}).values():
            self.detach(child)
        self.release_if_unused(node)

    def release_if_unused(self, node: Node) -> bool:
        if not node.attached and node.lookups <= 0 and node.opens <= 0 and node.ino != ROOT_INODE:
            if self.inodes.pop(node.ino, None) is not None and node.upper:
                self.released.append(node)
            return True
        return False

    async def rebase(self, listing: Listing) -> list[Node]:
        """Move to another snapshot's listing. A path whose content is the same keeps its
        node (inode, kernel caches, upper file); the others leave the namespace and are
        returned. Open files hold their node, so they keep reading what they opened.
        Only what the kernel has seen is compared: the directories listed so far are
        listed again in the new snapshot (v2: unchanged trees come from the cache), the
        others stay unlisted and are read when someone looks inside."""
        old = {path: node async for path, node in self.walk(descend=_listed)}   # no I/O: never yields
        relist = {path for path, node in old.items() if node.kind == "dir" and node.children is not None}
        if self.root.children is not None:
            relist.add("")
        self.listing = listing
        self._reuse = dict(old)
        self.fresh = []
        self.root.children, self.root.lower_path = None, ""
        try:
            async for _ in self.walk(descend=lambda _node, path: path in relist):
                pass
        finally:
            left, self._reuse = self._reuse, {}
        for node in left.values():
            node.attached = False
            self.release_if_unused(node)
        self.changes += 1
        return list(left.values())

    def _reused(self, path: str, entry: Entry) -> Node | None:
        """The old node at ``path`` if its content is ``entry``'s (a rebase), updated to it."""
        node = self._reuse.get(path)
        if node is None or node.kind != entry.kind:
            return None
        if entry.kind == "file":
            if node.upper and node.committed is not None and node.committed[0] != node.version:
                del self._reuse[path]
                return node      # written during the reload, after the commit before it: it stays
            if node.upper:
                if node.committed is None or node.committed[0] != node.version \
                        or not node.committed[1].same_content(entry):
                    return None
            elif node.size != entry.size or [c.id for c in node.chunks] != [c.id for c in entry.chunks]:
                return None
        elif entry.kind == "symlink" and node.target != entry.target:
            return None
        del self._reuse[path]
        node.mode, node.mtime_ns = entry.mode, entry.mtime_ns
        if entry.kind == "dir":
            node.children, node.lower_path = None, path
        return node

    async def remove(self, parent: Node, name: str, want_dir: bool) -> Node:
        node = await self.lookup(parent, name)
        if want_dir:
            if node.kind != "dir":
                raise FsError(errno.ENOTDIR)
            if await self.children(node):
                raise FsError(errno.ENOTEMPTY)
        elif node.kind == "dir":
            raise FsError(errno.EISDIR)
        assert parent.children is not None
        del parent.children[name]
        parent.touch()
        self.detach(node)
        self.changes += 1
        return node

    async def rename(self, old_parent: Node, old: str, new_parent: Node, new: str,
                     noreplace: bool = False) -> Node | None:
        """Move a name; returns the node it replaced (already detached), if any."""
        node = await self.lookup(old_parent, old)
        targets = await self.children(new_parent)
        ancestor: Node | None = new_parent
        while ancestor is not None:       # a directory cannot move into itself
            if ancestor is node:
                raise FsError(errno.EINVAL)
            ancestor = ancestor.parent
        replaced = targets.get(new)
        if replaced is node:
            return None
        if replaced is not None:
            if noreplace:
                raise FsError(errno.EEXIST)
            if replaced.kind == "dir":
                if node.kind != "dir":
                    raise FsError(errno.EISDIR)
                if await self.children(replaced):
                    raise FsError(errno.ENOTEMPTY)
            elif node.kind == "dir":
                raise FsError(errno.ENOTDIR)
        assert old_parent.children is not None
        del old_parent.children[old]
        targets[new] = node
        node.name, node.parent = new, new_parent
        node.ctime_ns = time.time_ns()
        old_parent.touch()
        new_parent.touch()
        if replaced is not None:
            self.detach(replaced)
        self.changes += 1
        return replaced

    async def walk(self, node: Node | None = None,
                   descend: Callable[[Node, str], bool] | None = None) -> AsyncIterator[tuple[str, Node]]:
        """Every node under ``node`` (default the root) with its path, parents first.
        ``descend(dir, path)`` False: the directory's children are neither listed nor walked."""
        stack = [(node or self.root, self.path(node or self.root))]
        while stack:
            current, path = stack.pop()
            if current is not self.root or path:
                yield path, current
            if current.kind == "dir" and (descend is None or descend(current, path)):
                for name, child in sorted((await self.children(current)).items(), reverse=True):
                    stack.append((child, f"{path}/{name}" if path else name))


def _listed(node: Node, _path: str) -> bool:
    return node.children is not None
