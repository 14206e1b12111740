"""A commit with nothing to commit, after another worker moved HEAD, leaves the local index where it
was: at the snapshot the directory holds, exact. It used to claim HEAD's seq, not exact, so the agent's
``reload`` (commit first, then hydrate) walked every directory of the volume for a 1-file change
elsewhere (22 s at 100,000 files, bench/scale.py), where the CLI's re-hydrate took 0.24 s."""

from __future__ import annotations

from pathlib import Path

from syncd.config import Config
from syncd.engine.commit import commit
from syncd.engine.hydrate import hydrate
from syncd.engine.wiring import open_engine

from .conftest import worker_config


async def test_a_commit_of_nothing_keeps_the_index_exact_and_the_next_hydrate_scoped(
        config: Config, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for d in range(20):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(10):
            (src / f"d{d}" / f"f{f}.txt").write_text(f"{d}/{f}\n")
    async with open_engine(config) as eng:
        await commit(eng, "vol", src)
    mine = tmp_path / "mine"
    w2 = worker_config(config, tmp_path, "w2")
    async with open_engine(w2) as eng:
        await hydrate(eng, "vol", mine)
        before = await eng.index.state("vol", mine)
        assert before is not None and before.exact
    (src / "d3" / "f4.txt").write_text("changed elsewhere\n")
    async with open_engine(config) as eng:
        elsewhere = await commit(eng, "vol", src)
    async with open_engine(w2) as eng:
        nothing = await commit(eng, "vol", mine)          # what the agent's reload does first
        assert nothing.changed == 0 and not nothing.merged
        assert nothing.snapshot == elsewhere.snapshot     # the volume's latest, reported
        assert await eng.index.state("vol", mine) == before   # the directory still holds `before`
        result = await hydrate(eng, "vol", mine)
    assert result.files_written == 1 and result.unchanged <= 2, result   # that file, no walk of the rest
    assert (mine / "d3" / "f4.txt").read_text() == "changed elsewhere\n"
