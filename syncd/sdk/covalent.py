"""Optional Covalent integration (``pip install "syncd[covalent]"``).

Attach once, at dispatch, as on the product page::

    import covalent as ct
    from syncd.covalent import dispatch, get_result   # the public name; this module implements it

    dispatch_id = dispatch(workflow, volume=my_volume)("model-1a-small", "model-3c-small")
    result = get_result(dispatch_id, wait=True)   # ct.get_result, with each failed task's reason

``dispatch`` builds the lattice's graph as ``ct.dispatch`` does and then gives
every task node two more hooks: a ``call_before`` that mounts the volume
through that worker's agent (create-or-refer, pull the latest commits) ahead
of the node's own hooks, and a ``call_after`` that commits and returns once
the writes are durable, after the node's own hooks. Nodes that carry hooks of
their own get them too (covalent's lattice-level ``call_before`` is dropped for
those), and covalent's internal nodes -- parameters, collections, the
post-processing step, whose names start with ``:`` -- get none, so there is no
extra mount or commit per dispatch. Electrons of a sublattice are built on the
server and are not reached: attach the volume to the sublattice's electrons
with ``volume_electron``.

``@volume_electron(vol)`` is ``ct.electron`` with the same two hooks; it does
not change the task's signature unless asked (``inject=True`` passes the
mounted Volume as the keyword argument ``volume``).

Covalent runs tasks with the environment ``covalent start`` had, which often
lacks ``SYNCD_SOCKET``. The hooks carry the socket path and owner the
dispatching process saw; the task's own ``SYNCD_SOCKET`` wins when it is set.
If no socket file exists at either, the hook fails at once with a message
that says so, instead of waiting for an agent that will never come; ``dispatch``
checks the same before it sends anything (``check_agent=False`` when the tasks
run on other machines), and ``get_result`` adds each failed task's reason to
the dispatch's error (covalent's own names only the failed tasks). Commit messages name the dispatch id and the
electron: ``covalent <dispatch id> <electron> (node N)``.
"""

from __future__ import annotations

import copy
import importlib
import os
from collections.abc import Callable
from typing import Any

from syncd.errors import AgentUnavailable
from syncd.format.layout import normalize_volume_name
from syncd.sdk.volume import DEFAULT_SOCKET, AgentClient, Volume, remember_client

RETVAL_KEYWORD = "volume"


def _covalent() -> Any:
    return importlib.import_module("covalent")  # optional: only needed when these are used


def _client(socket_path: str | None, owner: str | None, who: str = "this Covalent task") -> AgentClient:
    from_env = os.environ.get("SYNCD_SOCKET")
    path = from_env or socket_path or DEFAULT_SOCKET
    if not os.path.exists(path):
        where = (f"SYNCD_SOCKET={from_env!r} in the environment of {who}" if from_env else
                 f"SYNCD_SOCKET is not set in the environment of {who} (was 'covalent start' run without it?)")
        raise AgentUnavailable(f"syncd: no agent socket for {who}: {where}, and {path!r} does not exist. "
                               "Run 'syncd agent' on the worker and start covalent with SYNCD_SOCKET set.")
    return AgentClient(path, owner or None)


def _context() -> tuple[str, str]:
    """(dispatch id, node id) of the running Covalent task, as far as covalent tells."""
    dispatch_id, node = os.environ.get("COVALENT_DISPATCH_ID", ""), ""
    try:
        context = importlib.import_module("covalent.executor.utils.context").get_context()
        dispatch_id = str(context.dispatch_id or dispatch_id)
        node = "" if context.task_id is None else str(context.task_id)
    except (ImportError, AttributeError):
        pass
    return dispatch_id, node


def mount_hook(name: str, socket_path: str | None = None, owner: str | None = None) -> Volume:
    client = _client(socket_path, owner)
    remember_client(name, client)   # the task's own Volume objects (unpickled by name) use it too
    return Volume(name, client=client).mount()


def commit_hook(name: str, electron: str = "", socket_path: str | None = None, owner: str | None = None) -> None:
    dispatch_id, node = _context()
    words = ["covalent", dispatch_id or "(no dispatch id)", electron or "task"] + ([f"(node {node})"] if node else [])
    Volume(name, client=_client(socket_path, owner)).commit(" ".join(words))


def _volume_name(vol: Volume | str) -> str:
    return vol.name if isinstance(vol, Volume) else normalize_volume_name(vol)


def _where(vol: Volume | str) -> tuple[str | None, str | None]:
    """The agent socket and owner the dispatching process sees (the task's environment may lack them)."""
    client = vol._client if isinstance(vol, Volume) else None
    socket_path = client.socket_path if client is not None else os.environ.get("SYNCD_SOCKET")
    owner = client.owner if client is not None else os.environ.get("SYNCD_OWNER")
    return socket_path, owner


def volume_hooks(vol: Volume | str, inject: bool = False, electron: str = "") -> dict[str, list[Any]]:
    """``call_before``/``call_after`` lists for ``ct.electron`` that attach ``vol``."""
    ct = _covalent()
    name = _volume_name(vol)
    socket_path, owner = _where(vol)
    before = ct.DepsCall(mount_hook, args=[name, socket_path, owner],
                         retval_keyword=RETVAL_KEYWORD if inject else "")
    after = ct.DepsCall(commit_hook, args=[name, electron, socket_path, owner])
    return {"call_before": [before], "call_after": [after]}


def volume_electron(vol: Volume | str, inject: bool = False, **electron_args: Any) -> Callable[[Any], Any]:
    """``ct.electron`` with ``vol`` attached; other keyword arguments go to ``ct.electron``."""
    ct = _covalent()

    def decorate(fn: Callable[..., Any]) -> Any:
        hooks = volume_hooks(vol, inject, getattr(fn, "__name__", ""))
        before = hooks["call_before"] + list(electron_args.pop("call_before", []) or [])
        after = list(electron_args.pop("call_after", []) or []) + hooks["call_after"]
        return ct.electron(fn, call_before=before, call_after=after, **electron_args)
    return decorate


def attach_to_graph(lattice: Any, vol: Volume | str) -> int:
    """Give every task node of a built lattice the mount and commit hooks; returns how many."""
    graph = lattice.transport_graph
    attached = 0
    for node in list(graph._graph.nodes):
        name = str(graph.get_node_value(node, "name"))
        if name.startswith(":"):       # parameters, collections, post-processing: covalent's own
            continue
        ours = volume_hooks(vol, electron=name)
        metadata = dict(graph.get_node_value(node, "metadata"))
        hooks = dict(metadata.get("hooks") or {})   # shared between nodes of one electron: copy
        hooks["call_before"] = [d.to_dict() for d in ours["call_before"]] + list(hooks.get("call_before") or [])
        hooks["call_after"] = list(hooks.get("call_after") or []) + [d.to_dict() for d in ours["call_after"]]
        metadata["hooks"] = hooks
        graph.set_node_value(node, "metadata", metadata)
        attached += 1
    return attached


def dispatch(lattice: Any, volume: Volume | str | None = None, dispatcher_addr: str | None = None,
             check_agent: bool = True, **dispatch_args: Any) -> Callable[..., str]:
    """``ct.dispatch`` that attaches ``volume`` to every electron of the lattice.

    ``check_agent`` (default) fails before dispatching when no agent socket exists on this
    machine -- right for covalent's local executors; pass False when tasks run elsewhere.
    """
    ct = _covalent()
    if volume is None:
        return ct.dispatch(lattice, dispatcher_addr, **dispatch_args)  # type: ignore[no-any-return]
    vol: Volume | str = volume
    _volume_name(vol)   # a bad name fails here, not in every task
    if check_agent:
        socket_path, owner = _where(volume)
        _client(socket_path, owner, who="this dispatch (check_agent=False if tasks run elsewhere)")

    class _WithVolume(type(lattice)):  # type: ignore[misc]
        """The same lattice; its graph gets the hooks once built (ct.dispatch deep-copies it first)."""

        def build_graph(self, *args: Any, **kwargs: Any) -> None:
            super().build_graph(*args, **kwargs)
            attach_to_graph(self, vol)

    patched = copy.copy(lattice)
    patched.__class__ = _WithVolume
    return ct.dispatch(patched, dispatcher_addr, **dispatch_args)  # type: ignore[no-any-return]


def get_result(dispatch_id: str, wait: bool = False, **kwargs: Any) -> Any:
    """``ct.get_result``; a failed dispatch's error also carries each failed task's last error line.

    Covalent's own error names the failed tasks only; the reason (a missing agent, a
    commit conflict, the task's exception) is in each task's stderr.
    """
    result = _covalent().get_result(dispatch_id, wait=wait, **kwargs)
    if not getattr(result, "error", None):
        return result
    reasons = []
    for node in result.lattice.transport_graph._graph.nodes:
        detail = result.get_node_result(node)
        if str(detail.get("status")) != "FAILED":
            continue
        text = str(detail.get("error") or "") if detail.get("error") not in (None, "None") else ""
        lines = [line for line in (text or str(detail.get("stderr") or "")).splitlines() if line.strip()]
        reasons.append(f"{node}: {detail.get('node_name')}: {lines[-1] if lines else 'no error output'}")
    if reasons:
        result._error = f"{result.error}\n" + "\n".join(reasons)
    return result
