"""Start-up: a ``syncd`` command imports only what it needs (item 6 of issue 20)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

from syncd.cli import core


def test_command_words_name_every_module_that_registers_under_them() -> None:
    for module in core.COMMAND_MODULES:
        before = set(core.COMMANDS)
        importlib.import_module(module)
        mine = {name for name, cmd in core.COMMANDS.items() if cmd.handler.__module__ == module} | \
            (set(core.COMMANDS) - before)
        for name in mine:
            assert module in core.COMMAND_WORDS[name.split()[0]], (module, name)
    for name in core.COMMANDS:
        assert name.split()[0] in core.COMMAND_WORDS, name


def test_a_hydrate_imports_neither_the_agent_nor_the_sdk_nor_botocore() -> None:
    code = ("import sys, syncd.cli.core as c; c.build_parser(['hydrate', 'v', 'd']); "
            "import syncd.engine.hydrate, syncd.store.select, syncd.store.obstore; "
            "import json; print(json.dumps(sorted(sys.modules)))")
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True).stdout))
    for heavy in ("syncd.agent.service", "syncd.sdk", "syncd.local.watch", "botocore", "aiohttp", "http.client",
                  "syncd.cli.files", "rich"):
        assert heavy not in loaded, heavy


def test_help_still_lists_every_command(capsys: object) -> None:
    parser = core.build_parser()
    text = parser.format_help()
    for word in core.COMMAND_WORDS:
        assert word in text, word


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "; import json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_version_and_registration_import_no_engine_no_asyncio() -> None:
    """``syncd --version`` (and parsing any command) loads the parser and nothing of the engine:
    commands import the engine, store and cache when they run (core.open_engine)."""
    version = _modules_after("import sys, syncd.cli.core as c; c.build_parser(['--version'])")
    parse_all = _modules_after("import sys, syncd.cli.core as c; c.build_parser(['volume', 'ls'])")
    bare = _modules_after("import sys")
    for loaded in (version, parse_all):
        for heavy in ("syncd.engine.wiring", "syncd.data.cache", "diskcache", "obstore", "msgspec", "syncd.local"):
            assert heavy not in loaded, heavy
    assert "asyncio" not in version
    assert len(version - bare) <= 30, sorted(version - bare)   # argparse and json; ~200 with the engine
