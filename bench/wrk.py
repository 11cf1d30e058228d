"""wrk (Debian's `wrk`) as the load generator: one run, its req/s and latency percentiles.

Requests that need a body or change per request are Lua scripts (wrk's `request`,
`response`, `setup` and `delay` hooks), written to a temporary file per run.
"""

import asyncio
import json
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_PERCENTILE = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL = re.compile(r"^\s+(\d+) requests in", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


class WrkMissing(RuntimeError):
    """wrk is not installed."""


@dataclass(frozen=True)
class Load:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx/3xx answers and socket errors

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def wrk_command() -> str:
    found = shutil.which("wrk")
    if not found:
        raise WrkMissing("wrk is not installed (Debian: apt-get install wrk)")
    return found


def parse(output: str) -> Load:
    percentiles = {p: float(v) * _UNITS_MS[u] for p, v, u in _PERCENTILE.findall(output)}
    rate, total = _RATE.search(output), _TOTAL.search(output)
    if not (rate and total and "50" in percentiles and "99" in percentiles):
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    non_2xx = _NON_2XX.search(output)
    socket = _SOCKET.search(output)
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (
        sum(int(n) for n in socket.groups()) if socket else 0
    )
    return Load(
        requests_per_second=float(rate.group(1)),
        p50_ms=round(percentiles["50"], 3),
        p99_ms=round(percentiles["99"], 3),
        requests=int(total.group(1)),
        errors=errors,
    )


async def run(
    url: str,
    *,
    seconds: float,
    connections: int,
    threads: int = 1,
    headers: dict[str, str] | None = None,
    script: str | None = None,
    cpus: str | None = None,
    pace_ms: int = 0,
) -> Load:
    """wrk against `url` for `seconds`; pinned to `cpus` (taskset) when given. With
    `pace_ms`, each connection waits that long between requests, unless the script
    already sets its own pace."""
    if pace_ms and "function delay" not in (script or ""):
        script = (script or "") + paced(pace_ms)
    with tempfile.TemporaryDirectory() as folder:
        command = [
            wrk_command(),
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "--timeout",
            "30s",
        ]
        for name, value in (headers or {}).items():
            command += ["-H", f"{name}: {value}"]
        if script:
            path = Path(folder) / "script.lua"
            path.write_text(script)
            command += ["-s", str(path)]
        if cpus and shutil.which("taskset"):
            command = ["taskset", "-c", cpus, *command]
        process = await asyncio.create_subprocess_exec(
            *command, url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{output.decode(errors='replace')}")
    return parse(output.decode(errors="replace"))


def _lua(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal here


def post_json(path: str, body: str, headers: dict[str, str] | None = None) -> str:
    """The same JSON body on every request."""
    header_lines = "".join(
        f"wrk.headers[{_lua(name)}] = {_lua(value)}\n" for name, value in (headers or {}).items()
    )
    return (
        f'wrk.method = "POST"\nwrk.path = {_lua(path)}\nwrk.body = {_lua(body)}\n'
        f'wrk.headers["Content-Type"] = "application/json"\n{header_lines}'
    )


def patch_json(path: str, body: str, headers: dict[str, str]) -> str:
    return post_json(path, body, headers).replace('wrk.method = "POST"', 'wrk.method = "PATCH"')


def logins(email_pattern: str, count: int, password: str) -> str:
    """Logins as a random one of `count` users (`email_pattern` has one %d)."""
    return f"""
math.randomseed(os.time())
request = function()
  local body = string.format('{{"email":"{email_pattern}","password":{_lua(password)}}}',
                             math.random(1, {count}))
  return wrk.format("POST", "/api/v1/auth/login", {{["Content-Type"]="application/json"}}, body)
end
"""


def registrations(run_id: str, password: str) -> str:
    """Each request registers a new address."""
    return f"""
local n = 0
request = function()
  n = n + 1
  local body = string.format(
    '{{"email":"reg-{run_id}-%d@bench.example","password":{_lua(password)},'
    .. '"first_name":"Reg","last_name":"Istered"}}', n)
  return wrk.format("POST", "/api/v1/auth/register", {{["Content-Type"]="application/json"}}, body)
end
"""


def refresh_chains(tokens: list[str]) -> str:
    """One thread per token (run with threads = connections = len(tokens)): each thread
    spends its token and carries on with the one it gets back, so no token is spent twice."""
    listed = ", ".join(_lua(token) for token in tokens)
    return f"""
local tokens = {{{listed}}}
local given = 0
function setup(thread)
  given = given + 1
  thread:set("token", tokens[given])
end
request = function()
  return wrk.format("POST", "/api/v1/auth/refresh", {{["Content-Type"]="application/json"}},
                    '{{"refresh_token":"' .. token .. '"}}')
end
response = function(status, headers, body)
  local next_token = body:match('"refresh_token":"([^"]+)"')
  if next_token then token = next_token end
end
"""


def paced(milliseconds: int) -> str:
    """A steady low rate: each connection waits this long between its requests."""
    return f"function delay() return {milliseconds} end\n"
