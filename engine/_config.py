"""Engine settings: ``cronstack.toml`` in the project folder, then arguments.

Every key is optional. The file is read once when the engine opens; unknown
keys are refused with the nearest valid name so a typo never silently does
nothing.
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compiler import CompileError, Diagnostic
from compiler._errors import did_you_mean
from engine._store.errors import InvalidName, StoreError
from engine._store.filters import check_field, check_table
from engine._store.sqlite import MEMORY, sqlite_path

__all__ = ("EngineConfig", "load_config", "source_collisions", "CONFIG_FILE", "DEFAULT_DATABASE")

CONFIG_FILE = "cronstack.toml"
#: the database of a project folder without ``[database] url``, relative to the folder
DEFAULT_DATABASE = "sqlite:///cronstack.db"


@dataclass(slots=True)
class EngineConfig:
    """Settings of one engine. Defaults are what ``cronstack run DIR`` uses."""

    database: str | None = None
    data_sources: dict[str, str] = field(default_factory=dict)
    #: table -> indexed fields
    indexes: dict[str, list[str]] = field(default_factory=dict)
    synchronous: str = "NORMAL"
    api_host: str = "127.0.0.1"
    api_port: int = 7600
    cors_origins: list[str] = field(default_factory=list)
    token: str | None = None
    #: environment variables stacks see as `env` (glob patterns); empty = all
    env_include: list[str] = field(default_factory=list)
    env_values: dict[str, str] = field(default_factory=dict)
    max_running: int = 10_000
    shutdown_grace: float = 30.0
    prune_interval: float = 3600.0
    http_max_response_bytes: int = 10 * 1024 * 1024
    #: pooled HTTP connections of external_api_request: in all, and to one host
    http_connections: int = 100
    http_connections_per_host: int = 20
    #: raise the cyclic GC's first threshold and freeze the loaded definitions (see Engine)
    tune_gc: bool = True

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The mapping stacks read as ``env``."""
        source = dict(os.environ if base is None else base)
        if self.env_include:
            source = {
                k: v for k, v in source.items() if any(fnmatch.fnmatchcase(k, p) for p in self.env_include)
            }
        return {**self.env_values, **source}


_SECTIONS: dict[str, set[str]] = {
    "database": {"url", "synchronous"},
    "api": {"host", "port", "cors_origins"},
    "data_sources": set(),
    "tables": set(),
    "env": {"include", "values"},
    "engine": {"max_running", "shutdown_grace", "prune_interval", "http_max_response_bytes", "http_connections",
               "http_connections_per_host", "tune_gc"},
}


def _check(cond: bool, message: str, path: str, diags: list[Diagnostic]) -> bool:
    if not cond:
        diags.append(Diagnostic(message, path, CONFIG_FILE))
    return cond


def _check_names(table: str, fields: list[str], spelled: dict[str, str], diags: list[Diagnostic]) -> bool:
    """Table and index field names by the store's own rules, as diagnostics of ``tables.NAME``."""
    ok = True
    try:
        key = check_table(table)
    except InvalidName as exc:
        diags.append(Diagnostic(exc.message, f"tables.{table}", CONFIG_FILE))
        ok = False
    else:
        if key in spelled:
            diags.append(Diagnostic(
                f"tables.{spelled[key]} and tables.{table} are one table (table names ignore case); "
                "declare it once, with all its indexes", f"tables.{table}", CONFIG_FILE,
            ))
            ok = False
        spelled.setdefault(key, table)
    for name in fields:
        try:
            check_field(name)
        except InvalidName as exc:
            diags.append(Diagnostic(exc.message, f"tables.{table}.indexes", CONFIG_FILE))
            ok = False
    return ok


def _database_file(url: str, base_dir: Path | None) -> str | None:
    """The real path of the file a ``sqlite:///`` URL opens; None for memory or a bad URL."""
    try:
        path = sqlite_path(url, base_dir)
    except StoreError:
        return None  # opening it fails, and that error names its key
    return None if path == MEMORY else os.path.realpath(path)


def source_collisions(
    sources: dict[str, str], project_dir: Path | None, database: str, database_base: Path | None, database_label: str
) -> list[Diagnostic]:
    """``data_sources`` naming the engine's database file, or a file another source names.

    Paths are compared resolved (relative URLs against the project folder,
    symlinks followed), so ``sqlite:///./x.db`` and ``sqlite:////abs/x.db``
    meet. Without this check the second opening of a file fails on the
    engine's own lock, as ``StoreLocked`` naming this very process.
    """
    owners: dict[str, str] = {}
    main = _database_file(database, database_base)
    if main is not None:
        owners[main] = database_label
    diags = []
    for name, url in sources.items():
        path = _database_file(url, project_dir)
        if path is None:
            continue
        owner = owners.setdefault(path, f"data_sources.{name}")
        if owner == database_label:
            diags.append(Diagnostic(
                f"this is {path}, the file of {database_label}; a data source needs a database file of "
                f"its own: remove data_sources.{name} (a task whose data_source is not declared uses the "
                "default database) or point it at another file", f"data_sources.{name}", CONFIG_FILE,
            ))
        elif owner != f"data_sources.{name}":
            diags.append(Diagnostic(
                f"this is {path}, the same file as {owner}; give each data source a database file of its "
                f"own, or keep {owner} and use that name in the tasks", f"data_sources.{name}", CONFIG_FILE,
            ))
    return diags


def load_config(project_dir: Path | None) -> EngineConfig:
    """Read ``cronstack.toml`` of ``project_dir`` (when there is one)."""
    cfg = EngineConfig(token=os.environ.get("CRONSTACK_TOKEN") or None)
    if project_dir is None or not (project_dir / CONFIG_FILE).is_file():
        return cfg
    try:
        data: dict[str, Any] = tomllib.loads((project_dir / CONFIG_FILE).read_text("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CompileError(Diagnostic(f"invalid TOML: {exc}", "", CONFIG_FILE)) from None
    diags: list[Diagnostic] = []
    for section, value in data.items():
        if section not in _SECTIONS:
            diags.append(Diagnostic(f"unknown section [{section}]", section, CONFIG_FILE, hint=did_you_mean(section, _SECTIONS)))
            continue
        if not _check(isinstance(value, dict), f"[{section}] must be a table", section, diags):
            continue
        allowed = _SECTIONS[section]
        if allowed:
            for key in value:
                if key not in allowed:
                    diags.append(
                        Diagnostic(f"unknown key '{key}'", f"{section}.{key}", CONFIG_FILE, hint=did_you_mean(key, allowed))
                    )
    db = data.get("database", {})
    if isinstance(db.get("url"), str):
        cfg.database = db["url"]
    sync = db.get("synchronous")
    sync = sync.upper() if isinstance(sync, str) else sync  # SQLite's pragma ignores case too
    if "synchronous" in db and _check(sync in ("NORMAL", "FULL"), "synchronous must be NORMAL or FULL", "database.synchronous", diags):
        cfg.synchronous = sync
    api = data.get("api", {})
    if "host" in api and _check(isinstance(api["host"], str), "host must be text", "api.host", diags):
        cfg.api_host = api["host"]
    if "port" in api and _check(isinstance(api["port"], int) and 0 <= api["port"] < 65536, "port must be 0-65535", "api.port", diags):
        cfg.api_port = api["port"]
    if "cors_origins" in api and _check(
        isinstance(api["cors_origins"], list) and all(isinstance(o, str) for o in api["cors_origins"]),
        "cors_origins must be a list of origins like \"https://app.example.com\"", "api.cors_origins", diags,
    ):
        cfg.cors_origins = api["cors_origins"]
    for name, url in data.get("data_sources", {}).items():
        if _check(isinstance(url, str), "a data source is a URL text like \"sqlite:///data.db\"", f"data_sources.{name}", diags):
            cfg.data_sources[name] = url
    if cfg.data_sources:
        main_label = "the database of database.url" if cfg.database else "the default database"
        diags += source_collisions(cfg.data_sources, project_dir, cfg.database or DEFAULT_DATABASE, project_dir, main_label)
    spelled: dict[str, str] = {}  # table key (lower case) -> the name it was first declared as
    for table, spec in data.get("tables", {}).items():
        fields = spec.get("indexes") if isinstance(spec, dict) else None
        if _check(
            isinstance(fields, list) and all(isinstance(f, str) for f in fields),
            "declare a table as [tables.NAME] indexes = [\"field\", ...]", f"tables.{table}", diags,
        ) and _check_names(table, fields, spelled, diags):  # type: ignore[arg-type]
            cfg.indexes[table] = list(fields)  # type: ignore[arg-type]
    env = data.get("env", {})
    if "include" in env and _check(isinstance(env["include"], list), "include must be a list of names or patterns", "env.include", diags):
        cfg.env_include = [str(p) for p in env["include"]]
    if "values" in env and _check(isinstance(env["values"], dict), "values must be a table of NAME = \"value\"", "env.values", diags):
        cfg.env_values = {str(k): str(v) for k, v in env["values"].items()}
    for key, value in data.get("engine", {}).items():
        if key == "tune_gc":
            if _check(isinstance(value, bool), "tune_gc must be true or false", "engine.tune_gc", diags):
                cfg.tune_gc = value
        elif key in _SECTIONS["engine"]:
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if isinstance(getattr(cfg, key), int):
                # a count: 0.5 would truncate to 0 (no run would ever start; 0 connections means unlimited)
                if _check(number and value >= 1 and (isinstance(value, int) or value.is_integer()),
                          f"{key} must be a whole number of at least 1, not {value!r}", f"engine.{key}", diags):
                    setattr(cfg, key, int(value))
            elif _check(number and value > 0, f"{key} must be a positive number", f"engine.{key}", diags):
                setattr(cfg, key, float(value))
    if diags:
        raise CompileError(diags)
    return cfg
