"""The pyfuse3 ``Operations``: kernel requests answered from tree.py and data.py.

Every handler runs on the asyncio loop (``pyfuse3.asyncio``). Metadata
requests (lookup, getattr, readdir, readlink, statfs) are answered from the
inode table in memory; only ``read`` (and the copy-up of a write) can wait on
the network. :class:`~syncd.mount.tree.FsError` becomes ``FUSEError`` with its
errno; nothing else escapes a handler as anything but ``EIO``.

Open files are handles onto a node, not onto a path: an unlinked, renamed-over
or reloaded-away file stays readable (and writable) through its open handles
until they are closed. Content from the snapshot never changes under a node,
so ``open`` asks the kernel to keep its page cache (``keep_cache``) for files
not written here. ``fsync`` commits the mount (publish.py) and returns only
once the new snapshot is the volume's HEAD.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import pyfuse3

from syncd.errors import SyncdError
from syncd.format.manifest import Kind
from syncd.mount.data import Data, ReadState
from syncd.mount.publish import Publisher
from syncd.mount.tree import FsError, Node, Tree

log = logging.getLogger(__name__)
T = TypeVar("T")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND


@dataclass
class Handle:
    node: Node
    state: ReadState = field(default_factory=ReadState)


async def _guard(call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except FsError as exc:
        raise pyfuse3.FUSEError(exc.errno) from exc
    except SyncdError as exc:
        log.warning("mount request failed: %s: %s", type(exc).__name__, exc)
        raise pyfuse3.FUSEError(errno.EIO) from exc
    except Exception as exc:         # a bug: EIO and its traceback, never a request left unanswered
        log.exception("mount request failed unexpectedly")
        raise pyfuse3.FUSEError(errno.EIO) from exc


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


class MountOps(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, tree: Tree, data: Data, publisher: Publisher, read_only: bool = False,
                 timeout: float = 1.0, owner: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.tree, self.data, self.publisher = tree, data, publisher
        self.read_only, self.timeout = read_only, timeout
        self.handles: dict[int, Handle] = {}
        self.dirs: dict[int, list[tuple[str, Node]]] = {}
        self._next_fh = 1
        # every node shows as the tasks' (Config.file_owner) when other uids use the mount
        self.uid, self.gid = owner if owner is not None else (os.getuid(), os.getgid())

    # ---------------------------------------------------------------- helpers

    def attr(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.st_mode = node.st_mode()
        a.st_nlink = 2 if node.kind == "dir" else 1
        a.st_uid, a.st_gid = self.uid, self.gid
        a.st_size = node.size
        a.st_blksize = 128 * 1024
        a.st_blocks = (node.size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = node.mtime_ns
        a.st_ctime_ns = node.ctime_ns
        a.entry_timeout = a.attr_timeout = self.timeout
        return a

    def _writable(self) -> None:
        if self.read_only:
            raise FsError(errno.EROFS)

    def _fh(self, node: Node) -> int:
        fh, self._next_fh = self._next_fh, self._next_fh + 1
        self.handles[fh] = Handle(node)
        node.opens += 1
        return fh

    def _handle(self, fh: int) -> Handle:
        handle = self.handles.get(fh)
        if handle is None:
            raise FsError(errno.EBADF)
        return handle

    async def drain(self) -> None:
        released, self.tree.released = self.tree.released, []
        for node in released:
            await self.data.drop(node)

    def _changed(self) -> None:
        self.tree.changes += 1

    # ---------------------------------------------------------------- metadata

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        async def go() -> pyfuse3.EntryAttributes:
            node = await self.tree.lookup(self.tree.get(parent_inode), _name(name))
            node.lookups += 1
            return self.attr(node)
        return await _guard(go)

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:  # type: ignore[override]
        for ino, count in inode_list:
            node = self.tree.inodes.get(ino)
            if node is not None:
                node.lookups -= count
                self.tree.release_if_unused(node)
        await self.drain()

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await _guard(lambda: self._getattr(inode))

    async def _getattr(self, inode: int) -> pyfuse3.EntryAttributes:
        return self.attr(self.tree.get(inode))

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        async def go() -> pyfuse3.EntryAttributes:
            self._writable()
            node = self.tree.get(inode)
            if fields.update_size:
                if node.kind != "file":
                    raise FsError(errno.EISDIR)
                await self.data.truncate(node, attr.st_size)
            if fields.update_mode:
                node.mode = attr.st_mode & 0o7777
            if fields.update_mtime:
                node.mtime_ns = attr.st_mtime_ns
            if fields.update_uid or fields.update_gid:
                if (fields.update_uid and attr.st_uid != self.uid) or (fields.update_gid and attr.st_gid != self.gid):
                    raise FsError(errno.EPERM)   # a volume has no owners per file
            node.ctime_ns = max(node.ctime_ns, node.mtime_ns)
            self._changed()
            return self.attr(node)
        return await _guard(go)

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        async def go() -> bytes:
            node = self.tree.get(inode)
            if node.kind != "symlink":
                raise FsError(errno.EINVAL)
            return os.fsencode(node.target or "")
        return await _guard(go)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        async def go() -> int:
            node = self.tree.get(inode)
            listing = sorted((await self.tree.children(node)).items())
            fh, self._next_fh = self._next_fh, self._next_fh + 1
            self.dirs[fh] = listing
            return fh
        return await _guard(go)

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self.dirs.get(fh, [])
        for index in range(start_id, len(listing)):
            name, node = listing[index]
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self.attr(node), index + 1):
                return
            node.lookups += 1

    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = os.statvfs(self.data.upper_dir)
        out = pyfuse3.StatvfsData()
        out.f_bsize = out.f_frsize = st.f_frsize
        free = st.f_bavail if self.data.limit is None else \
            max(0, self.data.limit - self.data.used) // st.f_frsize
        out.f_blocks = max(free, st.f_blocks)
        out.f_bfree = out.f_bavail = free
        out.f_files = len(self.tree.inodes) + 1_000_000
        out.f_ffree = out.f_favail = 1_000_000
        out.f_namemax = 255
        return out

    # ---------------------------------------------------------------- namespace

    async def _add(self, parent_inode: int, name: bytes, kind: Kind, mode: int,
                   target: str | None = None) -> Node:
        self._writable()
        node = await self.tree.add(self.tree.get(parent_inode), _name(name), kind, mode & 0o7777, target)
        node.lookups += 1
        return node

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        async def go() -> pyfuse3.EntryAttributes:
            return self.attr(await self._add(parent_inode, name, "dir", mode))
        return await _guard(go)

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        async def go() -> pyfuse3.EntryAttributes:
            if (mode & 0o170000) not in (0, 0o100000):
                raise FsError(errno.EPERM)     # no devices, fifos or sockets in a volume
            return self.attr(await self._add(parent_inode, name, "file", mode))
        return await _guard(go)

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        async def go() -> pyfuse3.EntryAttributes:
            return self.attr(await self._add(parent_inode, name, "symlink", 0o777, os.fsdecode(target)))
        return await _guard(go)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        async def go() -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
            node = await self._add(parent_inode, name, "file", mode)
            return pyfuse3.FileInfo(fh=self._fh(node)), self.attr(node)
        return await _guard(go)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        async def go() -> None:
            self._writable()
            await self.tree.remove(self.tree.get(parent_inode), _name(name), want_dir=False)
            await self.drain()
        await _guard(go)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        async def go() -> None:
            self._writable()
            await self.tree.remove(self.tree.get(parent_inode), _name(name), want_dir=True)
        await _guard(go)

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: pyfuse3.RequestContext) -> None:
        async def go() -> None:
            self._writable()
            if flags & pyfuse3.RENAME_EXCHANGE:
                raise FsError(errno.EINVAL)
            await self.tree.rename(self.tree.get(parent_inode_old), _name(name_old),
                                   self.tree.get(parent_inode_new), _name(name_new),
                                   noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE))
            await self.drain()
        await _guard(go)

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)      # snapshots have no hard links

    # ---------------------------------------------------------------- data

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        async def go() -> pyfuse3.FileInfo:
            node = self.tree.get(inode)
            if node.kind != "file":
                raise FsError(errno.EISDIR if node.kind == "dir" else errno.ELOOP)
            if flags & WRITE_FLAGS:
                self._writable()
            if flags & os.O_TRUNC and node.size:
                await self.data.truncate(node, 0)
                self._changed()
            return pyfuse3.FileInfo(fh=self._fh(node), keep_cache=not node.upper)
        return await _guard(go)

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:  # type: ignore[override]
        async def go() -> bytes | memoryview:
            handle = self._handle(fh)
            return await self.data.read(handle.node, off, size, handle.state)
        return await _guard(go)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        async def go() -> int:
            self._writable()
            written = await self.data.write(self._handle(fh).node, off, buf)
            self._changed()
            return written
        return await _guard(go)

    async def flush(self, fh: int) -> None:
        return None

    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if handle is not None:
            handle.node.opens -= 1
            if not handle.node.opens:
                self.data.closed(handle.node)
            self.tree.release_if_unused(handle.node)
            await self.drain()

    async def fsync(self, fh: int, datasync: bool) -> None:
        async def go() -> None:
            if not self.read_only and self.publisher.dirty:
                await self.publisher.commit("fsync")
        await _guard(go)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.fsync(fh, datasync)

    # ---------------------------------------------------------------- reload

    async def reload(self) -> int:
        gone = await self.publisher.reload()
        for node in gone:
            if node.parent is not None:
                try:
                    pyfuse3.invalidate_entry_async(node.parent.ino, os.fsencode(node.name), ignore_enoent=True)
                except Exception:     # best effort: entries expire after ``timeout`` anyway
                    log.debug("invalidate %s failed", node.name, exc_info=True)
        await self.drain()
        return len(gone)
