"""Deciding what a hydrate must do. Pure: no I/O.

Inputs: the snapshot's entries (desired), the local index (what syncd last put
in the directory, with stat fingerprints) and a fresh scan (what is there now).
Each desired path falls in one case::

    absent locally                                  -> create
    tracked, unchanged locally, same content        -> keep (maybe fix mode/mtime)
    tracked, unchanged locally, new content         -> replace
    tracked, changed locally, remote unchanged      -> keep the local edit (pending commit)
    same kind (dir, equal symlink)                  -> adopt
    a file of the same size, untracked or changed   -> verify by hashing, then adopt or CONFLICT
    anything else                                   -> CONFLICT

Verifying changed tracked files matters after a crash: a hydrate killed after
replacing some files never saved its index, so those files look locally
changed while they hold exactly what the snapshot wants.

Tracked paths missing from the snapshot are deleted if unchanged locally and
left alone (untracked) if the user changed them. A directory the user replaced
by a symlink or file is a kept local edit, and so is everything the snapshot
has below it: hydrate never writes through a local symlink (localfs.py also
refuses at the system-call level, whatever the plan says). Untracked paths the snapshot
does not mention are never touched. Conflicts abort the hydrate before any
byte is written unless the caller asked to overwrite.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from syncd.format.manifest import Entry
from syncd.local.index import LocalIndex, Tracked, unchanged
from syncd.local.scan import LocalFile


@dataclass
class Plan:
    create: list[Entry] = field(default_factory=list)        # write/mkdir/symlink
    meta: list[Entry] = field(default_factory=list)          # same bytes, fix mode/mtime
    keep: dict[str, Tracked] = field(default_factory=dict)   # tracked, nothing to do
    verify: list[Entry] = field(default_factory=list)        # hash local file, adopt if equal
    delete: list[str] = field(default_factory=list)          # tracked, gone from snapshot
    clear: list[str] = field(default_factory=list)           # local things in the way (overwrite)
    conflicts: list[str] = field(default_factory=list)
    kept_local: list[str] = field(default_factory=list)



def plan_hydrate(desired: Mapping[str, Entry], index: LocalIndex, local: Mapping[str, LocalFile],
                 overwrite: bool = False) -> Plan:
    plan = Plan()
    for path in sorted(desired):
        _plan_path(plan, desired[path], index.files.get(path), local.get(path))
    for path, tracked in index.files.items():
        if path in desired:
            continue
        loc = local.get(path)
        if loc is None:
            continue
        if unchanged(tracked, loc):
            plan.delete.append(path)
        else:
            plan.kept_local.append(path)
    _check_blockers(plan, desired, index, local)
    _skip_shadowed(plan, local)
    if overwrite:
        plan.clear.extend(p for p in plan.conflicts if p in local)
        for path in plan.conflicts:
            plan.create.append(desired[path])
        plan.conflicts = []
    plan.delete.sort(key=lambda p: p.count("/"), reverse=True)
    return plan


def _plan_path(plan: Plan, entry: Entry, tracked: Tracked | None, loc: LocalFile | None) -> None:
    path = entry.path
    if loc is None:
        plan.create.append(entry)
    elif tracked is not None and unchanged(tracked, loc):
        if entry.same_content(tracked.entry):
            plan.keep[path] = Tracked(entry, tracked.fingerprint)
        elif entry.kind == "file" == tracked.entry.kind and _same_bytes(entry, tracked.entry):
            plan.meta.append(entry)
        elif entry.kind == "dir" == tracked.entry.kind:
            plan.meta.append(entry)
        else:
            plan.create.append(entry)
    elif tracked is not None and entry.same_content(tracked.entry):
        plan.kept_local.append(path)
        plan.keep[path] = tracked
    elif loc.kind == entry.kind == "dir":
        plan.meta.append(entry)
    elif loc.kind == entry.kind == "symlink" and loc.target == entry.target:
        plan.keep[path] = Tracked(entry, None)
    elif loc.kind == entry.kind == "file" and loc.size == entry.size:
        plan.verify.append(entry)
    else:
        plan.conflicts.append(path)


def _skip_shadowed(plan: Plan, local: Mapping[str, LocalFile]) -> None:
    """Leave alone what lies below a local edit that replaced a directory.

    If the user replaced a directory by a symlink or a file (a pending change,
    kept), the snapshot's paths below it are not ours to write: writing them
    would go through the user's symlink, possibly out of the volume. They
    count as kept local edits too; the next commit records the replacement.
    """
    shadows = [p + "/" for p in plan.kept_local if p in local and local[p].kind != "dir"]
    if not shadows:
        return

    def shadowed(path: str) -> bool:
        return any(path.startswith(s) for s in shadows)

    for name in ("create", "meta", "verify"):
        entries: list[Entry] = getattr(plan, name)
        plan.kept_local += [e.path for e in entries if shadowed(e.path)]
        setattr(plan, name, [e for e in entries if not shadowed(e.path)])
    plan.delete = [p for p in plan.delete if not shadowed(p)]


def _same_bytes(a: Entry, b: Entry) -> bool:
    return a.size == b.size and [c.id for c in a.chunks] == [c.id for c in b.chunks]


def _check_blockers(plan: Plan, desired: Mapping[str, Entry], index: LocalIndex,
                    local: Mapping[str, LocalFile]) -> None:
    """A local directory where a file must go is only removed if syncd owns all of it."""
    for entry in plan.create:
        loc = local.get(entry.path)
        if loc is None or loc.kind != "dir" or entry.kind == "dir":
            continue
        prefix = entry.path + "/"
        owned = all(p in index.files and unchanged(index.files[p], local[p])
                    for p in local if p.startswith(prefix))
        if owned and entry.path in index.files:
            plan.clear.append(entry.path)
        else:
            plan.conflicts.append(entry.path)
    if plan.conflicts:
        bad = set(plan.conflicts)
        plan.create = [e for e in plan.create if e.path not in bad]
