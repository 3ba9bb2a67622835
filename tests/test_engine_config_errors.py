"""Start-up errors of a project: each says where (cronstack.toml, which key) and what to do."""

import os

import pytest

from engine import CompileError, Engine
from engine._config import load_config
from engine._store import StoreError, StoreLocked, UnsupportedDatabase

pytestmark = pytest.mark.anyio

TASK = '{"name": "t1", "stack": [{"function": "return", "value": 1}]}'


def project(tmp_path, toml="", dirname="p"):
    d = tmp_path / dirname
    d.mkdir()
    (d / "t1.json").write_text(TASK)
    if toml:
        (d / "cronstack.toml").write_text(toml)
    return d


def problems(exc_info):
    return [(d.file, d.path, d.message) for d in exc_info.value.diagnostics]


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


# -- [tables.NAME]: names checked by the store's rules, at load ------------------------------
@pytest.mark.parametrize(
    ("toml", "path", "words"),
    [
        ('[tables."bad-name"]\nindexes = ["a"]\n', "tables.bad-name", "table name 'bad-name' is not valid"),
        ('[tables.sqlite_x]\nindexes = ["a"]\n', "tables.sqlite_x", "is reserved"),
        ('[tables.cronstack_runs]\nindexes = ["a"]\n', "tables.cronstack_runs", "is reserved"),
        ('[tables.users]\nindexes = ["e-mail"]\n', "tables.users.indexes", "field name 'e-mail' is not valid"),
        ('[tables.users]\nindexes = ["ok", "a..b"]\n', "tables.users.indexes", "field name 'a..b' is not valid"),
    ],
)
def test_bad_table_or_field_name_is_a_diagnostic_of_cronstack_toml(tmp_path, toml, path, words):
    d = project(tmp_path, toml)
    with pytest.raises(CompileError) as exc_info:
        load_config(d)
    [(file, where, message)] = problems(exc_info)
    assert (file, where) == ("cronstack.toml", path)
    assert words in message


def test_every_bad_name_is_listed_at_once(tmp_path):
    toml = '[tables."a-b"]\nindexes = ["x"]\n[tables.users]\nindexes = ["e-mail", "ok", "1st"]\n'
    with pytest.raises(CompileError) as exc_info:
        load_config(project(tmp_path, toml))
    assert [p for _, p, _ in problems(exc_info)] == ["tables.a-b", "tables.users.indexes", "tables.users.indexes"]


def test_two_spellings_of_one_table_are_refused(tmp_path):
    toml = '[tables.Users]\nindexes = ["a"]\n[tables.users]\nindexes = ["b"]\n'
    with pytest.raises(CompileError) as exc_info:
        load_config(project(tmp_path, toml))
    [(file, path, message)] = problems(exc_info)
    assert (file, path) == ("cronstack.toml", "tables.users")
    assert "tables.Users" in message and "ignore case" in message


def test_good_tables_still_load(tmp_path):
    cfg = load_config(project(tmp_path, '[tables.users]\nindexes = ["email", "address.city", "created_at"]\n'))
    assert cfg.indexes == {"users": ["email", "address.city", "created_at"]}


async def test_engine_open_reports_bad_table_as_compile_error(tmp_path):
    d = project(tmp_path, '[tables."bad-name"]\nindexes = ["a"]\n')
    with pytest.raises(CompileError) as exc_info:
        async with Engine.open(d):
            pass
    assert "cronstack.toml: tables.bad-name:" in str(exc_info.value)
    assert not (d / "cronstack.db").exists()


# -- data sources on a file already in use ---------------------------------------------------
@pytest.mark.parametrize(
    "url", ["sqlite:///cronstack.db", "sqlite:///./sub/../cronstack.db", "ABS"]
)
def test_data_source_on_the_default_database_is_refused_at_load(tmp_path, url):
    d = project(tmp_path, dirname="p")
    if url == "ABS":
        url = f"sqlite:///{d / 'cronstack.db'}"
    (d / "sub").mkdir()
    (d / "cronstack.toml").write_text(f'[data_sources]\nmain = "{url}"\n')
    with pytest.raises(CompileError) as exc_info:
        load_config(d)
    [(file, path, message)] = problems(exc_info)
    assert (file, path) == ("cronstack.toml", "data_sources.main")
    assert "default database" in message and str(d.resolve() / "cronstack.db") in message
    assert "pid" not in message


def test_data_source_on_the_configured_database_is_refused(tmp_path):
    d = project(tmp_path, '[database]\nurl = "sqlite:///main.db"\n[data_sources]\nrep = "sqlite:///main.db"\n')
    with pytest.raises(CompileError) as exc_info:
        load_config(d)
    [(_, path, message)] = problems(exc_info)
    assert path == "data_sources.rep" and "database.url" in message


def test_two_data_sources_on_one_file_are_refused(tmp_path):
    d = project(tmp_path, '[data_sources]\na = "sqlite:///r.db"\nb = "sqlite:///r.db"\n')
    with pytest.raises(CompileError) as exc_info:
        load_config(d)
    [(file, path, message)] = problems(exc_info)
    assert (file, path) == ("cronstack.toml", "data_sources.b")
    assert "data_sources.a" in message and str(d.resolve() / "r.db") in message


def test_data_sources_in_memory_never_collide(tmp_path):
    d = project(tmp_path, '[data_sources]\na = "sqlite:///:memory:"\nb = "sqlite:///:memory:"\n')
    assert set(load_config(d).data_sources) == {"a", "b"}


async def test_engine_open_checks_sources_against_the_database_argument(tmp_path):
    d = project(tmp_path, '[data_sources]\nrep = "sqlite:///other.db"\n')
    with pytest.raises(CompileError) as exc_info:
        async with Engine.open(d, database=f"sqlite:///{d / 'other.db'}"):
            pass
    [(_, path, message)] = problems(exc_info)
    assert path == "data_sources.rep" and "engine's database" in message


async def test_engine_open_same_file_sources_is_not_store_locked(tmp_path):
    d = project(tmp_path, '[data_sources]\nmain = "sqlite:///cronstack.db"\n')
    with pytest.raises(CompileError) as exc_info:
        async with Engine.open(d):
            pass
    assert f"pid {os.getpid()}" not in str(exc_info.value)
    assert "data_sources.main" in str(exc_info.value)


# -- any failure opening a data source names it ---------------------------------------------
@pytest.mark.parametrize(
    ("url", "kind", "words"),
    [
        ("sqlite:///nodir/r.db", StoreError, "does not exist"),
        ("mysql://localhost/x", UnsupportedDatabase, "unknown database URL"),
        ("postgresql://127.0.0.1:1/x", StoreError, "PostgreSQL at 127.0.0.1:1/x is unreachable"),
        ("sqlite:///../out.db", StoreError, "leaves the project directory"),
        ("sqlite:///r.db?mode=ro", StoreError, "query strings"),
    ],
)
async def test_error_opening_a_data_source_names_it(tmp_path, url, kind, words):
    d = project(tmp_path, f'[data_sources]\nrep = "{url}"\n')
    with pytest.raises(kind) as exc_info:
        async with Engine.open(d):
            pass
    text = exc_info.value.message
    assert text.startswith("cronstack.toml: data_sources.rep: ") and words in text
    assert str(exc_info.value) == text
    assert type(exc_info.value) is kind


async def test_data_source_held_by_another_engine_stays_store_locked_and_named(tmp_path):
    shared = tmp_path / "shared.db"
    a = project(tmp_path, f'[data_sources]\nrep = "sqlite:///{shared}"\n', dirname="a")
    b = project(tmp_path, f'[data_sources]\nrep = "sqlite:///{shared}"\n', dirname="b")
    async with Engine.open(a):
        with pytest.raises(StoreLocked) as exc_info:
            async with Engine.open(b):
                pass
    assert exc_info.value.message.startswith("cronstack.toml: data_sources.rep: another cronstack engine")
    assert exc_info.value.extra["pid"] == str(os.getpid())
    # b's failed start released its own database: once a stops, b starts
    async with Engine.open(b) as engine:
        assert engine.records_for("rep").path == str(shared)


async def test_os_error_opening_a_data_source_becomes_a_named_store_error(tmp_path, monkeypatch):
    from engine import _engine

    real = _engine.open_store

    def failing(url, **kwargs):
        if url == "sqlite:///r.db":
            raise PermissionError(13, "Permission denied", "r.db.lock")
        return real(url, **kwargs)

    monkeypatch.setattr(_engine, "open_store", failing)
    d = project(tmp_path, '[data_sources]\nrep = "sqlite:///r.db"\n')
    with pytest.raises(StoreError) as exc_info:
        async with Engine.open(d):
            pass
    assert exc_info.value.message == "cronstack.toml: data_sources.rep: [Errno 13] Permission denied: 'r.db.lock'"
    assert isinstance(exc_info.value.__cause__, PermissionError)


@pytest.mark.parametrize(("given", "kept"), [("full", "FULL"), ("Normal", "NORMAL"), ("FULL", "FULL")])
def test_synchronous_takes_any_case(tmp_path, given, kept):
    cfg = load_config(project(tmp_path, f'[database]\nsynchronous = "{given}"\n'))
    assert cfg.synchronous == kept


def test_synchronous_refuses_other_values(tmp_path):
    with pytest.raises(CompileError, match="synchronous must be NORMAL or FULL") as e:
        load_config(project(tmp_path, '[database]\nsynchronous = "OFF"\n'))
    assert "database.synchronous" in str(e.value)


def test_a_count_setting_past_any_float_is_read_not_a_crash(tmp_path):
    """A whole number too large for a float is still a whole number (float() raised OverflowError)."""
    big = 10**320
    cfg = load_config(project(tmp_path, f"[engine]\nmax_running = {big}\n"))
    assert cfg.max_running == big
