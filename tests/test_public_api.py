"""Each package's public surface is small, explicit and complete."""

import importlib
import types

import pytest


@pytest.mark.parametrize("package", ["engine", "compiler", "runtime"])
def test_all_is_complete_and_importable(package):
    mod = importlib.import_module(package)
    assert isinstance(mod.__all__, tuple)
    assert list(mod.__all__) == sorted(mod.__all__), "keep __all__ sorted"
    for name in mod.__all__:
        assert hasattr(mod, name), f"{package}.{name} is in __all__ but missing"
    public = {
        name
        for name, value in vars(mod).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public - set(mod.__all__) == set(), f"{package} exposes names not in __all__"


def test_engine_exposes_the_spec_interface():
    import engine

    for name in ("Engine", "Schedule", "CompileError", "RunFailed"):
        assert name in engine.__all__
    for method in ("open", "trigger", "run_stack", "register_function", "runs", "serve", "stop"):
        assert callable(getattr(engine.Engine, method))
