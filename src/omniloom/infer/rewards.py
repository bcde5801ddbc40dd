"""Rewards: a score for one sampled answer, from a Python callable or a shell command.

A reward reads one **sample record** (a line of ``omniloom sample``'s output: ``messages`` (the
prompt), ``candidate`` (the assistant message), ``meta`` (the prompt line's other fields, e.g. an
answer key), ``reference``, ``sampling``...) in which every media path is absolute, and returns a
finite number, higher meaning better. A reward is named by a spec:

==============================  ===================================================================
``NAME``                        a registered reward (``omniloom sample`` registers ``world``: the
                                shapes world's judges)
``package.module:function``     a callable importable from the Python path
``path/to/file.py:function``    a callable defined in that file
``cmd:COMMAND``                 a shell command: the record arrives as one JSON line on stdin, the
                                score is the last line it prints (exit status 0)
==============================  ===================================================================

The registry is generic: it knows no task or world; a layer that knows one registers it with
:func:`register_reward` (a factory, called once when the reward is first used, so heavy judges
load only when asked for).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import subprocess
from pathlib import Path
from typing import Any, Callable

__all__ = ["Reward", "register_reward", "reward_names", "load_reward", "check_score"]

RewardFn = Callable[[dict], float]

_REGISTRY: dict[str, Callable[[], RewardFn]] = {}


def register_reward(name: str, factory: Callable[[], RewardFn]) -> None:
    """Name a built-in reward; ``factory()`` returns the callable when the reward is first loaded."""
    if not name or ":" in name:
        raise ValueError(f"a registered reward's name must be non-empty and hold no ':', got {name!r}")
    _REGISTRY[name] = factory


def reward_names() -> list[str]:
    return sorted(_REGISTRY)


def check_score(value: Any, spec: str, where: str) -> float:
    """A reward's return value as a float; ValueError naming the reward and the record otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"reward {spec!r} returned {value!r} for {where}, not a number") from None
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"reward {spec!r} returned {value} for {where}; scores must be finite")
    return value


class Reward:
    """A loaded reward: ``reward(record) -> float``, checked to be a finite number."""

    def __init__(self, spec: str, fn: RewardFn):
        self.spec, self.fn = spec, fn

    def __call__(self, record: dict) -> float:
        where = f"prompt {record.get('id', '?')!r} candidate {record.get('sampling', {}).get('index', '?')}"
        return check_score(self.fn(record), self.spec, where)


class _CommandReward:
    def __init__(self, command: str, timeout: float):
        self.command, self.timeout = command, timeout

    def __call__(self, record: dict) -> float:
        where = f"prompt {record.get('id', '?')!r}"
        try:
            res = subprocess.run(["sh", "-c", self.command], input=json.dumps(record) + "\n", capture_output=True,
                                 text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise ValueError(f"reward command {self.command!r} took over {self.timeout:g} s on {where}") from None
        if res.returncode != 0:
            raise ValueError(f"reward command {self.command!r} failed (exit {res.returncode}) on {where}: "
                             f"{res.stderr.strip()[-300:]}")
        lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
        if not lines:
            raise ValueError(f"reward command {self.command!r} printed no score on {where}")
        try:
            return float(lines[-1].strip())
        except ValueError:
            raise ValueError(f"reward command {self.command!r} printed {lines[-1].strip()[:80]!r} on {where}, "
                             "not a number (the score must be the last line of its output)") from None


def _from_file(path: Path) -> Any:
    if not path.is_file():
        raise ValueError(f"reward file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"omniloom_reward_{abs(hash(str(path.resolve())))}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load reward file {path} as Python")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_reward(spec: str, command_timeout: float = 60.0) -> Reward:
    """A reward from its spec (see the module's table); ValueError naming what is wrong."""
    spec = (spec or "").strip()
    if not spec:
        raise ValueError("empty reward spec")
    if spec.startswith("cmd:"):
        command = spec[4:].strip()
        if not command:
            raise ValueError("reward spec 'cmd:' names no command")
        return Reward(spec, _CommandReward(command, command_timeout))
    if spec in _REGISTRY:
        return Reward(spec, _REGISTRY[spec]())
    if ":" not in spec:
        known = ", ".join(reward_names()) or "none"
        raise ValueError(f"unknown reward {spec!r}: give a registered name ({known}), module:function, "
                         "file.py:function or cmd:COMMAND")
    target, name = spec.rsplit(":", 1)
    if target.endswith(".py"):
        module = _from_file(Path(target))
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ValueError(f"reward {spec!r}: cannot import {target!r} ({e})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"reward {spec!r}: {target} has no callable {name!r}")
    return Reward(spec, fn)
