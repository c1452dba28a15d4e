"""Where a scenario's batching policy and queue order come from: a built-in or a user's class.

A reference is one of:

- a built-in name: a key of `POLICIES` (engine.policies) or `QUEUES` (engine.queues), the one
  registry of each; nothing else in simserve lists them;
- `path/to/file.py:ClassName`: a class in a Python file (written in a scenario, the path is
  relative to the scenario file; `config.resolve_path_value` makes it absolute);
- `package.module:ClassName`: a class in an importable module.

The class is checked against the protocol when the scenario is loaded, so a mistake is one
`InputError` naming the field before anything runs, never a traceback mid-simulation.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from simserve.engine.policies import POLICIES, BatchingPolicy
from simserve.engine.queues import QUEUES, FCFSQueue
from simserve.engine.state import RequestTable
from simserve.errors import InputError

__all__ = ["POLICY_CAPABILITIES", "is_class_reference", "policy_class", "queue_class"]

#: What a policy declares besides `schedule` (their meaning: `BatchingPolicy`).
POLICY_CAPABILITIES: dict[str, type] = {
    "name": str,
    "whole_prompts": bool,
    "reserves_full_kv": bool,
    "supports_speculation": bool,
    "repeats_decode_plans": bool,
    "admits_while_running": bool,
    "caches_prefixes_by_default": bool,
    "engine_generation": str,
}
ENGINE_GENERATIONS = ("v0", "v1")


def is_class_reference(ref: str) -> bool:
    """Whether `ref` names a user's class (`file.py:Class` or `module:Class`), not a built-in."""
    return ":" in ref


def policy_class(ref: str, field: str = "engine.policy") -> type[BatchingPolicy]:
    """The batching policy `ref` names, checked against the policy protocol."""
    if not is_class_reference(ref):
        return _builtin(ref, POLICIES, field, "policy")
    cls = _load_class(ref, field)
    where = f"{cls.__name__} ({ref})"
    if not callable(getattr(cls, "schedule", None)):
        raise InputError(f"{where} has no schedule(state, now) method", field=field)
    for attr, kind in POLICY_CAPABILITIES.items():
        value = getattr(cls, attr, None)
        if not isinstance(value, kind):
            raise InputError(
                f"{where} must declare {attr} ({kind.__name__}); subclass "
                "simserve.engine.BatchingPolicy for the defaults",
                field=field,
            )
    if cls.engine_generation not in ENGINE_GENERATIONS:
        raise InputError(
            f"{where}.engine_generation must be one of {', '.join(ENGINE_GENERATIONS)}, got "
            f"{cls.engine_generation!r}",
            field=field,
        )
    _check_own_name(cls, POLICIES, BatchingPolicy.name, where, field)
    policy = _construct(cls, (), where, field, "a policy is built with no arguments, one per "
                        "engine")
    _check_takes(policy.schedule, 2, f"{where}.schedule must take (self, state, now)", field)
    return cls


def queue_class(ref: str, field: str = "engine.queue") -> type[FCFSQueue]:
    """The queue order `ref` names: a subclass of `FCFSQueue` (usually of `KeyedQueue`)."""
    if not is_class_reference(ref):
        return _builtin(ref, QUEUES, field, "queue order")
    cls = _load_class(ref, field)
    where = f"{cls.__name__} ({ref})"
    if not issubclass(cls, FCFSQueue):
        raise InputError(
            f"{where} is not a queue order: subclass simserve.engine.KeyedQueue (or FCFSQueue)",
            field=field,
        )
    if not isinstance(getattr(cls, "name", None), str):
        raise InputError(f"{where} must declare name (str)", field=field)
    # NOTE: KeyedQueue inherits FCFSQueue's name, so a subclass that forgets its own would
    # be reported as fcfs.
    _check_own_name(cls, QUEUES, None, where, field)
    queue = _construct(cls, (_empty_requests(),), where, field,
                       "a queue order is built with the request table, one per engine")
    _check_takes(queue.key, 1, f"{where}.key must take (self, request_id)", field)
    _check_takes(queue.running_key, 2,
                 f"{where}.running_key must take (self, request_id, remaining_output)", field)
    return cls


def _builtin(name: str, registry: dict[str, Any], field: str, what: str) -> Any:
    try:
        return registry[name]
    except KeyError:
        raise InputError(
            f"unknown {what} {name!r}: built in are {', '.join(registry)}; a class of your "
            "own is path/to/file.py:ClassName or package.module:ClassName",
            field=field,
        ) from None


def _load_class(ref: str, field: str) -> type:
    source, _, name = ref.rpartition(":")
    if not source or not name.isidentifier():
        raise InputError(f"{ref!r} is not file.py:ClassName or package.module:ClassName",
                         field=field)
    module = _load_file(source, field) if source.endswith(".py") else _import(source, field)
    cls = getattr(module, name, None)
    if cls is None:
        raise InputError(f"{source} defines no {name}", field=field)
    if not isinstance(cls, type):
        raise InputError(f"{name} in {source} is not a class", field=field)
    return cls


def _load_file(source: str, field: str) -> Any:
    path = Path(source)
    if not path.is_file():
        raise InputError(f"no such file {source}", field=field)
    # A name of its own per file, so two files both called policy.py do not collide.
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"simserve_user_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path,
                                                  loader=_SourceOnly(module_name, str(path)))
    if spec is None or spec.loader is None:
        raise InputError(f"cannot load {source} as Python", field=field)
    module = importlib.util.module_from_spec(spec)
    # NOTE: registered before running, as `import` does (dataclasses and pickling look the
    # module up by name); replaced on every load, so an edited file is read again.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[module_name]
        raise InputError(f"{source}:{exc.lineno}: {exc.msg}", field=field) from None
    except Exception as exc:  # the user's module failed while running: say where
        del sys.modules[module_name]
        raise InputError(f"{_where_raised(exc, path)}: {type(exc).__name__}: {exc}",
                         field=field) from None
    return module


class _SourceOnly(importlib.machinery.SourceFileLoader):
    """Loads the user's file without writing `__pycache__/` beside it: a scenario's folder is
    the user's, and simserve writes nothing there."""

    def set_data(self, path: str, data: bytes, *, _mode: int = 0o666) -> None:
        pass


def _import(module_name: str, field: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise InputError(f"cannot import {module_name}: {exc}", field=field) from None
    except SyntaxError as exc:
        raise InputError(f"{exc.filename}:{exc.lineno}: {exc.msg}", field=field) from None
    except Exception as exc:
        raise InputError(f"importing {module_name} failed: {type(exc).__name__}: {exc}",
                         field=field) from None


def _where_raised(exc: BaseException, path: Path) -> str:
    """`file:line` of the deepest frame of `path` in the exception's traceback."""
    line = None
    resolved = path.resolve()
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename).resolve() == resolved:
            line = frame.lineno
    return f"{path}:{line}" if line else str(path)


def _check_own_name(cls: type, registry: dict[str, type], base_name: str | None, where: str,
                    field: str) -> None:
    """A user's class reports its own `name` (in summary.json): not a built-in's nor the
    base class's default, which would label the run as something it is not."""
    name = cls.name  # type: ignore[attr-defined]
    if registry.get(name, cls) is not cls or name == base_name:
        raise InputError(f"{where} must declare a name of its own (it has {name!r}, which "
                         "names another class); the summary reports it", field=field)


def _construct(cls: type, args: tuple, where: str, field: str, how: str) -> Any:
    try:
        return cls(*args)
    except Exception as exc:
        raise InputError(f"building {where} failed: {type(exc).__name__}: {exc} ({how})",
                         field=field) from None


def _check_takes(method: Any, num_args: int, message: str, field: str) -> None:
    """That a bound method accepts `num_args` positional arguments (as the engine calls it)."""
    try:
        inspect.signature(method).bind(*([None] * num_args))
    except TypeError:
        raise InputError(message, field=field) from None
    except ValueError:  # no signature to inspect (a builtin): trust it
        pass


def _empty_requests() -> RequestTable:
    empty = np.zeros(0)
    return RequestTable(empty, empty, empty)
