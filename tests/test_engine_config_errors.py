"""Start-up errors of a project: each says where (cronstack.toml, which key) and what to do."""

import pytest

from engine import Engine

pytestmark = pytest.mark.anyio

TASK = '{"name": "t1", "stack": [{"function": "return", "value": 1}]}'


def project(tmp_path, toml="", dirname="p"):
    d = tmp_path / dirname
    d.mkdir()
    (d / "t1.json").write_text(TASK)
    if toml:
        (d / "cronstack.toml").write_text(toml)
    return d


# -- the default database opens in any directory -------------------------------------------
@pytest.mark.parametrize("dirname", ["c#jobs", "what?", "100%", "my jobs", "a#b?c%20 d"])
async def test_default_database_opens_for_any_directory_name(tmp_path, dirname):
    d = project(tmp_path, dirname=dirname)
    async with Engine.open(d) as engine:
        assert engine.store.path == str((d / "cronstack.db").resolve())
        run = await engine.trigger("t1", wait=True)
        assert run["status"] == "completed"
    assert (d / "cronstack.db").is_file()
    # the second start finds the same file again (its history is there)
    async with Engine.open(d) as engine:
        assert [r["status"] for r in await engine.runs("t1")] == ["completed"]


async def test_default_database_relative_project_dir(tmp_path, monkeypatch):
    d = project(tmp_path, dirname="x#y")
    monkeypatch.chdir(tmp_path)
    async with Engine.open("x#y") as engine:
        assert engine.store.path == str((d / "cronstack.db").resolve())
