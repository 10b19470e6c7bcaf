"""The Redis backend's Lua scripts: read from package data, run with EVALSHA.

Every state transition is one script in ``backends/redis/lua/<name>.lua``. Each script gets
``lib.lua`` prepended (and any file it names on a leading line ``--! other.lua``), so helpers
live in one place while Redis still sees one self-contained script. A leading Redis 7
shebang line (``#!lua flags=allow-oom``) stays first. Scripts are sent by SHA1;
after a server restart or ``SCRIPT FLUSH`` the server answers ``NOSCRIPT`` and the script is
loaded again and re-run, once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from conveyor.backends.redis.pipe import ScriptPipe

ScriptArg = str | bytes | int | float

_INCLUDE = "--! "


@dataclass(frozen=True, slots=True)
class Script:
    """One loaded script: its full source and SHA1."""

    name: str
    source: str
    sha: str


def _read(name: str) -> str:
    return (resources.files("conveyor.backends.redis") / "lua" / name).read_text(encoding="utf-8")


@cache
def script(name: str) -> Script:
    """The script ``<name>.lua`` with ``lib.lua`` and its own includes prepended."""
    lines = _read(f"{name}.lua").split("\n")
    shebang: list[str] = []
    includes: list[str] = []
    while lines and (lines[0].startswith("#!") or lines[0].startswith(_INCLUDE)):
        line = lines.pop(0)
        if line.startswith("#!"):
            shebang.append(line)
        else:
            includes.extend(x.strip() for x in line[len(_INCLUDE) :].split(","))
    parts = [*shebang, _read("lib.lua"), *(_read(x) for x in includes), "\n".join(lines)]
    source = "\n".join(parts)
    return Script(name, source, hashlib.sha1(source.encode("utf-8")).hexdigest())


async def run(
    client: Redis, name: str, base: str, args: Sequence[ScriptArg], pipe: ScriptPipe | None = None
) -> Any:
    """Run script ``name`` with ``KEYS = [base]`` and ``ARGV = args``; load it on NOSCRIPT.

    With a ``pipe`` the call goes through it (see :mod:`~conveyor.backends.redis.pipe`),
    otherwise through redis-py's ``client``."""
    s = script(name)
    if pipe is not None:
        try:
            return await pipe.execute("EVALSHA", s.sha, 1, base, *args)
        except NoScriptError:
            await pipe.execute("SCRIPT", "LOAD", s.source)
            return await pipe.execute("EVALSHA", s.sha, 1, base, *args)
    try:
        return await client.evalsha(s.sha, 1, base, *args)
    except NoScriptError:
        await client.script_load(s.source)
        return await client.evalsha(s.sha, 1, base, *args)
