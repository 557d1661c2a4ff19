"""Fuzz the public API: every bad input must be a named error, every accepted one must run correctly.

    python -m experiments.fuzz --cases 10000                 # prints counts by outcome
    python -m experiments.fuzz --cases 300 --kinds action azure_trace --out runs/fuzz

Case kinds (each a JSON description, generated from ``--seed``):

* ``override``: one scenario key of a shipped scenario set to a value from a pool of awkward ones
  (negative, zero, huge, integers of hundreds of digits, NaN, strings, lists, mappings, ...);
  accepted scenarios are simulated for a short while and checked.
* ``valid``: a random valid small scenario (hardware, load, routing, queueing, scaling; half of
  them on the paged engine, some with multi-turn sessions and prefix caching) run to
  its horizon, with request conservation and KPI ranges checked at every control interval.
* ``action``: an awkward object given to an environment's ``step``; it must be accepted exactly
  when the action space contains it, and refused with the environment's own message otherwise.
* ``azure_trace`` / ``mooncake_trace`` / ``alibaba_trace``: a small valid trace file with one field
  or line mutated;
  an invalid mutation must be refused naming file and line, a valid one must be read.

Outcomes: ``ok``; ``named_error`` (a ConfigError, ValueError or RuntimeError whose message names
the key, file:line or environment); ``crash`` (any other exception, an unnamed message, or the
process died); ``hang`` (over ``--timeout-s``); ``silently_wrong`` (accepted but invalid, or an
invariant broken). Cases run in worker processes with an address-space limit (``--memory-mib``);
a worker that dies or hangs is replaced. Every crash, hang and silently wrong case is written to
``--out`` as a runnable repro (``python <file>``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from experiments.fuzz_cases import (
    ALIBABA_NODES,
    ALIBABA_PODS,
    AZURE_HEADER,
    AZURE_ROWS,
    ENV_CASES,
    KINDS,
    MOONCAKE_ROWS,
    OUTCOMES,
    _from_json,
    make_case,
)

# ---------------------------------------------------------------------------------------------- running


def _named(exc: BaseException, *, names: tuple[str, ...] = ()) -> bool:
    """Whether ``exc`` is a named error: a config/value/runtime error whose message says where."""
    from envs.sim.errors import ConfigError

    if not isinstance(exc, (ConfigError, ValueError, RuntimeError)) or isinstance(exc, MemoryError):
        return False
    msg = str(exc)
    head = msg.split(": ", 1)[0]
    return (
        bool(head)
        and len(head) < 120
        and (" " not in head or any(n in head for n in names))
        or any(msg.startswith(n) for n in names)
    )


def _check_kpis(sim: Any, kpis: dict[str, float] | None) -> str | None:
    """An invariant broken by the simulator's state or an interval's KPIs (None: all hold)."""
    ep = sim.episode_kpis()
    if ep["requests_arrived"] != ep["requests_completed"] + ep["requests_dropped"] + ep["requests_in_system"]:
        return f"conservation: {ep}"
    if sim.in_system() != ep["requests_in_system"] or sim.in_system() < 0:
        return f"in_system {sim.in_system()} vs {ep['requests_in_system']}"
    for k, v in {**ep, **(kpis or {})}.items():
        if not math.isfinite(v):
            return f"{k} = {v}"
    for d in (ep, kpis or {}):
        if not 0.0 <= d.get("slo_attainment", 1.0) <= 1.0 or not 0.0 <= d.get("utilization", 0.0) <= 1.0:
            return f"ratio out of [0, 1]: {d}"
        if any(
            d.get(k, 0.0) < 0 for k in ("gpu_seconds", "cost_usd", "requests_completed", "slo_violations")
        ):
            return f"negative count: {d}"
        if not 0.0 <= d.get("prefix_hit_rate", 0.0) <= 1.0 or d.get("preemptions", 0.0) < 0:
            return f"paged engine KPI out of range: {d}"
    for v in sim.replica_views():  # KV held never exceeds capacity (both engines)
        if v.kv_reserved_tokens > v.kv_capacity_tokens or v.kv_blocks_free < 0:
            return f"replica {v.id}: KV {v.kv_reserved_tokens} of {v.kv_capacity_tokens}, {v.kv_blocks_free} blocks free"
    return None


def run_case(case: dict[str, Any], scratch: Path) -> tuple[str, str]:
    """(outcome, detail) of one case, run in this process."""
    kind = case["kind"]
    try:
        if kind == "selftest":  # the harness checking itself (tests): how each bad outcome looks
            return _selftest(case["mode"])
        if kind == "override":
            return _run_override(case)
        if kind == "valid":
            return _run_valid(case)
        if kind == "action":
            return _run_action(case)
        if kind == "azure_trace":
            return _run_azure(case, scratch)
        if kind == "mooncake_trace":
            return _run_mooncake(case, scratch)
        return _run_alibaba(case, scratch)
    except MemoryError as exc:
        return "crash", f"MemoryError: {exc}"[:300]


def _selftest(mode: str) -> tuple[str, str]:
    if mode == "raise":
        raise KeyError("an unnamed error")
    if mode == "hang":
        time.sleep(3600)
    if mode == "die":
        os._exit(3)
    if mode == "allocate":
        return "ok", str(len(bytearray(2**40)))
    return "ok", ""


def _run_override(case: dict[str, Any]) -> tuple[str, str]:
    from envs.sim import Simulator

    try:
        sim = Simulator(case["scenario"], case["seed"], overrides={case["key"]: _from_json(case["value"])})
    except Exception as exc:  # noqa: BLE001  (the point is to classify every exception)
        return ("named_error" if _named(exc) else "crash"), f"{type(exc).__name__}: {exc}"[:300]
    sim.advance(min(30.0, sim.scenario.horizon_s))
    broken = _check_kpis(sim, sim.interval_kpis())
    return ("silently_wrong", broken) if broken else ("ok", "")


def _run_valid(case: dict[str, Any]) -> tuple[str, str]:
    from envs.sim import Simulator
    from envs.sim.clock import ControlClock

    sim = Simulator(case["scenario"], case["seed"])
    clock = ControlClock(sim)
    while not clock.done:
        clock.advance()
        broken = _check_kpis(sim, sim.control_step())
        if broken:
            return "silently_wrong", broken
    return "ok", ""


def _run_action(case: dict[str, Any]) -> tuple[str, str]:
    import warnings

    import gymnasium as gym

    import envs  # noqa: F401  (registers the ids)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = gym.make(case["env_id"], **ENV_CASES[case["env_id"]]).unwrapped
    env.reset(seed=case["seed"])
    for _ in range(case["steps_before"]):
        a = (
            int(np.flatnonzero(env.action_masks())[0])
            if hasattr(env, "action_masks")
            else env.action_space.sample()
        )
        if env.step(a)[3]:
            env.reset(seed=case["seed"])
    action = _from_json(case["action"])
    try:
        contained = bool(env.action_space.contains(action)) and bool(
            np.all(np.mod(np.asarray(action), 1) == 0)
        )
    except Exception:  # noqa: BLE001
        contained = False
    names = tuple(c.__name__ for c in type(env).__mro__)  # a version's class errors as its base names it
    try:
        env.step(action)
    except Exception as exc:  # noqa: BLE001
        if contained:
            return "silently_wrong", f"refused an action the space contains: {exc}"[:300]
        named = isinstance(exc, ValueError) and str(exc).startswith(names)
        return ("named_error" if named else "crash"), f"{type(exc).__name__}: {exc}"[:300]
    if not contained:
        return "silently_wrong", f"accepted {action!r}, not in {env.action_space}"
    return "ok", ""


def _read_expect(case: dict[str, Any], read: Any, path: Path) -> tuple[str, str]:
    try:
        read()
    except Exception as exc:  # noqa: BLE001
        named = _named(exc, names=(path.name,)) and path.name in str(exc)
        if case["valid"]:
            return "silently_wrong", f"refused a valid file: {exc}"[:300]
        return ("named_error" if named else "crash"), f"{type(exc).__name__}: {exc}"[:300]
    return ("ok", "") if case["valid"] else ("silently_wrong", "accepted an invalid file")


def _run_azure(case: dict[str, Any], scratch: Path) -> tuple[str, str]:
    from envs.sim.workload import read_azure_trace

    rows = list(AZURE_ROWS)
    r, m = case["row"], case["mutation"]
    if m == 0:  # a token count replaced
        fields = rows[r].split(",")
        fields[case["col"]] = case["text"]
        rows[r] = ",".join(fields)
    elif m == 1:  # a column dropped
        rows[r] = ",".join(rows[r].split(",")[:2])
    elif m == 2:  # a timestamp garbled
        rows[r] = "2023-13-45 99:99:99" + rows[r][19:]
    # m == 3: untouched (valid)
    path = scratch / f"azure-{case['index']}.csv"
    path.write_text("\n".join([AZURE_HEADER, *rows]) + "\n")
    return _read_expect(case, lambda: read_azure_trace(path), path)


def _run_mooncake(case: dict[str, Any], scratch: Path) -> tuple[str, str]:
    from envs.sim.prefixes import read_mooncake_trace

    rows = [dict(r) for r in MOONCAKE_ROWS]
    r, m = case["row"], case["mutation"]
    lines = [json.dumps(x) for x in rows]
    if m == 0:  # one value set (a length change keeps hash_ids consistent unless hash_ids is the key)
        row = rows[r]
        value = _from_json(case["value"])
        if case["key"] == "timestamp+":  # a fractional millisecond on the row's own time (still sorted)
            row["timestamp"] += value
        else:
            row[case["key"]] = value
        if (
            case["key"] == "input_length"
            and isinstance(value, int)
            and not isinstance(value, bool)
            and 0 <= value <= 10**7
        ):
            row["hash_ids"] = list(range(-(-value // 512)))
        lines[r] = json.dumps(row)
    elif m == 1:  # a key dropped
        del rows[r]["output_length"]
        lines[r] = json.dumps(rows[r])
    elif m == 2:  # a line cut short
        lines[r] = lines[r][: len(lines[r]) // 2]
    path = scratch / f"mooncake-{case['index']}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return _read_expect(case, lambda: read_mooncake_trace(path), path)


def _run_alibaba(case: dict[str, Any], scratch: Path) -> tuple[str, str]:
    from envs.sim.jobtrace import read_alibaba_trace

    pods = [f"pod-{i},{1000 * (i + 1)},{2048},1,{500 + 100 * i},,LS,Running,{10 * i},{10 * i + 100},{10 * i + 1}"
            for i in range(3)]  # fmt: skip
    fields = pods[case["row"]].split(",")
    fields[case["col"]] = case["text"]
    pods[case["row"]] = ",".join(fields)
    pods_path, nodes_path = scratch / f"pods-{case['index']}.csv", scratch / f"nodes-{case['index']}.csv"
    pods_path.write_text("\n".join([ALIBABA_PODS, *pods]) + "\n")
    nodes_path.write_text(f"{ALIBABA_NODES}\nnode-0,96000,393216,8,V100M32\n")
    return _read_expect(case, lambda: read_alibaba_trace(pods_path, nodes_path), pods_path)


# ---------------------------------------------------------------------------------------------- workers


def worker(memory_mib: int, scratch: str) -> None:
    """Read one JSON case per line on stdin, answer one JSON result per line on stdout."""
    import resource

    limit = memory_mib * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints must not corrupt the protocol
    for line in sys.stdin:
        case = json.loads(line)
        t0 = time.perf_counter()
        try:
            outcome, detail = run_case(case, Path(scratch))
        except Exception as exc:  # noqa: BLE001
            outcome, detail = "crash", f"{type(exc).__name__}: {exc}"[:300]
        out.write(json.dumps({"outcome": outcome, "detail": detail, "s": time.perf_counter() - t0}) + "\n")
        out.flush()


class Worker:
    def __init__(self, memory_mib: int, scratch: Path) -> None:
        cmd = [sys.executable, "-m", "experiments.fuzz", "--worker", "--memory-mib", str(memory_mib),
               "--scratch", str(scratch)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
        self.case: dict[str, Any] | None = None
        self.started = 0.0

    def send(self, case: dict[str, Any]) -> None:
        self.case, self.started = case, time.monotonic()
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def run(cases: list[dict[str, Any]], workers: int, timeout_s: float, memory_mib: int, scratch: Path,
        progress: bool = True) -> list[dict[str, Any]]:  # fmt: skip
    """Run every case in ``workers`` processes; one result dict per case, in order."""
    scratch.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any] | None] = [None] * len(cases)
    todo = list(range(len(cases)))[::-1]
    pool = [Worker(memory_mib, scratch) for _ in range(min(workers, len(cases)))]
    idle = list(pool)
    busy: list[tuple[Worker, int]] = []
    done = 0
    while todo or busy:
        while idle and todo:
            w, i = idle.pop(), todo.pop()
            w.send(cases[i])
            busy.append((w, i))
        ready, _, _ = select.select([w.proc.stdout for w, _ in busy], [], [], 0.2)
        still = []
        for w, i in busy:
            if w.proc.stdout in ready:
                line = w.proc.stdout.readline()
                if line:
                    results[i] = json.loads(line)
                    idle.append(w)
                else:  # the worker died with the case (a segfault, the memory limit, ...)
                    code = w.proc.wait()
                    results[i] = {"outcome": "crash", "detail": f"worker died (exit {code})", "s": 0.0}
                    idle.append(Worker(memory_mib, scratch))
                done += 1
            elif time.monotonic() - w.started > timeout_s:
                w.kill()
                results[i] = {"outcome": "hang", "detail": f"over {timeout_s} s", "s": timeout_s}
                idle.append(Worker(memory_mib, scratch))
                done += 1
            else:
                still.append((w, i))
        busy = still
        if progress and done and done % 100 == 0:
            print(f"\r{done}/{len(cases)} cases", end="", file=sys.stderr, flush=True)
    for w in idle:
        w.proc.stdin.close()
        w.kill()
    if progress:
        print(file=sys.stderr)
    return [{**c, **r} for c, r in zip(cases, results, strict=True)]


def write_repro(result: dict[str, Any], out: Path) -> Path:
    """A runnable script that re-runs one case in this process and prints its outcome."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result['outcome']}-{result['kind']}-{result['index']}.py"
    case = {k: result[k] for k in result if k not in ("outcome", "detail", "s")}
    path.write_text(
        f"# {result['outcome']}: {result['detail']}\n"
        "import json, sys, tempfile\nfrom pathlib import Path\n"
        "from experiments.fuzz import run_case\n"
        f"case = json.loads({json.dumps(json.dumps(case))})\n"
        "print(run_case(case, Path(tempfile.mkdtemp())))\n"
    )
    return path


def main(argv: list[str] | None = None) -> dict[str, int]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=500, help="number of cases (spread evenly over --kinds)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the case generator")
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="case kinds to run")
    ap.add_argument("--workers", type=int, default=2, help="worker processes")
    ap.add_argument("--timeout-s", type=float, default=60.0, help="a case running longer is a hang")
    ap.add_argument("--memory-mib", type=int, default=6144, help="address-space limit of a worker (MiB)")
    ap.add_argument(
        "--out", default="runs/fuzz", help="folder for repros of crashes, hangs, silent acceptances"
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.memory_mib, args.scratch)
        return {}
    if args.cases < 1 or args.workers < 1 or args.timeout_s <= 0 or args.memory_mib < 512:
        ap.error("--cases and --workers must be >= 1, --timeout-s > 0, --memory-mib >= 512")
    rng = np.random.default_rng(args.seed)
    cases = [make_case(args.kinds[i % len(args.kinds)], rng, i) for i in range(args.cases)]
    out = Path(args.out)
    t0 = time.perf_counter()
    results = run(cases, args.workers, args.timeout_s, args.memory_mib, out / "scratch")
    counts = Counter(r["outcome"] for r in results)
    by_kind = Counter((r["kind"], r["outcome"]) for r in results)
    print(f"{len(results)} cases in {time.perf_counter() - t0:.0f} s (seed {args.seed})")
    print(f"{'kind':<16}" + "".join(f"{o:>16}" for o in OUTCOMES))
    for kind in args.kinds:
        print(f"{kind:<16}" + "".join(f"{by_kind[kind, o]:>16}" for o in OUTCOMES))
    print(f"{'all':<16}" + "".join(f"{counts[o]:>16}" for o in OUTCOMES))
    bad = [r for r in results if r["outcome"] in ("crash", "hang", "silently_wrong")]
    for r in bad:
        print(f"  {r['outcome']}: {write_repro(r, out / 'repro')}  {r['detail'][:160]}")
    (out / "summary.json").write_text(json.dumps({o: counts[o] for o in OUTCOMES}) + "\n")
    return {o: counts[o] for o in OUTCOMES}


if __name__ == "__main__":
    counts = main()
    sys.exit(1 if any(counts.get(o, 0) for o in ("crash", "hang", "silently_wrong")) else 0)
