"""Goodput of aggregated vs disaggregated serving on the same replicas: the highest request rate a
deployment serves at an SLO-attainment goal, for every prefill:decode split of a replica budget and at
tightened SLOs.

    python -m experiments.goodput                       # `default`'s load and SLOs, 4 replicas
    python -m experiments.goodput --replicas 8 --slo-scale 1 0.5 0.25 --out results/goodput
    python -m experiments.goodput --set workload.sizes.prompt_mean=2048 --set workload.sizes.output_mean=28
    python -m experiments.goodput --scenario mooncake-conv --trace conversation_trace.jsonl --replicas 8

This is the measure the disaggregation papers report, so our model can be held against their headline
directions: DistServe's *per-GPU goodput*, "the maximum request rate that can be served adhering to
the SLO attainment goal (say, 90%)" (Zhong et al., OSDI 2024, Sec. 2.1 and Fig. 8-9: throughput at a
fixed SLO, and the tightest SLO scale met at a fixed rate), and Splitwise's throughput under latency
SLOs at a fixed number of machines (Patel et al., ISCA 2024, Sec. VI).

For each deployment of the scenario's one model (aggregated: ``N`` replicas; disaggregated: ``P``
prefill and ``N - P`` decode replicas for every ``P`` in ``1..N-1``; all static, so the comparison is
at equal hardware) and each SLO scale ``s`` (every class's TTFT, TPOT and end-to-end targets times
``s``), the load is bisected to the largest at which the mean SLO attainment over the seeds is at least
``--attainment``. Requests still unfinished at the horizon count as violations (as in every KPI), so a
deployment past its capacity fails however short the horizon. Synthetic load: the Poisson rate
(``workload.arrival.kind: poisson``). A trace replay: the rows the scenario replays in its horizon,
sped up or slowed down (``time_scale``, with the horizon scaled alike, so every level replays the same
requests); its rate is their number over the scaled horizon. The search assumes
attainment falls as load rises (true of a queue; near the edge a seed's noise can break it, which the
tolerance absorbs).
"""

from __future__ import annotations

import argparse
import csv
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from envs.sim import ConfigError, load_scenario, run_scenario, shipped_scenarios
from envs.sim.config import Scenario
from envs.sim.errors import check_number, fail
from experiments.simulate import parse_set

#: Attainment goal: DistServe's default (Sec. 2.1: "say, 90%"; its Fig. 8 uses 90%).
DEFAULT_ATTAINMENT = 0.9
#: KPIs reported at each deployment's goodput.
REPORTED = ("slo_attainment", "ttft_p50_s", "ttft_p99_s", "tpot_mean_s", "e2e_mean_s", "cost_usd")


@dataclass(frozen=True)
class Deployment:
    """One way to serve the model on the budget: ``prefill == 0`` is aggregated (``decode`` replicas
    doing both phases)."""

    prefill: int
    decode: int
    #: GPU types (``gpu_types``) of the aggregated replicas, the prefill pool and the decode pool; None:
    #: the model's own
    gpus: Mapping[str, Sequence[str] | None] | None = None

    @property
    def label(self) -> str:
        return f"aggregated {self.decode}" if self.prefill == 0 else f"P{self.prefill}:D{self.decode}"

    def model(self, base: Mapping[str, Any]) -> dict[str, Any]:
        """The ``models[0]`` entry of this deployment, the rest of ``base`` kept."""
        keep = {k: v for k, v in base.items() if k not in ("serving", "prefill", "decode", "replicas",
                                                            "min_replicas", "max_replicas")}  # fmt: skip
        gpus = dict(self.gpus or {})

        def sized(n: int, role: str) -> dict[str, Any]:
            types = gpus.get(role)
            return {"replicas": n, "min_replicas": n, "max_replicas": n} | (
                {"gpu_types": list(types)} if types else {}
            )

        if self.prefill == 0:
            return {**keep, **sized(self.decode, "aggregated")}
        return {**keep, "serving": "disaggregated", "prefill": sized(self.prefill, "prefill"),
                "decode": sized(self.decode, "decode")}  # fmt: skip


def deployments(replicas: int, gpus: Mapping[str, Sequence[str] | None] | None = None) -> list[Deployment]:
    """Aggregated ``replicas`` and every prefill:decode split of them; ``gpus`` maps ``aggregated``,
    ``prefill`` and ``decode`` to GPU types (e.g. Splitwise-HA: prefill on H100, decode on A100)."""
    check_number("replicas", replicas, ge=2, integer=True)
    return [Deployment(0, replicas, gpus)] + [Deployment(p, replicas - p, gpus) for p in range(1, replicas)]


def scaled_classes(sc: Scenario, scale: float) -> list[dict[str, Any]]:
    """The scenario's request classes with every SLO target multiplied by ``scale``."""
    out = []
    for c in sc.workload.classes:
        slo = {k: getattr(c.slo, k) * scale for k in ("ttft_s", "tpot_s", "e2e_s") if getattr(c.slo, k)}
        entry = {"name": c.name, "share": c.share, "priority": c.priority, "slo": slo}
        if np.isfinite(c.timeout_s):
            entry["timeout_s"] = c.timeout_s
        out.append(entry)
    return out


class Load:
    """How a load level (requests per second) becomes scenario overrides: a Poisson rate, or a trace's
    speed-up with the horizon stretched or shrunk to match, so that every level replays the same rows."""

    def __init__(self, sc: Scenario):
        arrival = sc.workload.arrival
        self.kind = arrival.kind
        if self.kind == "poisson":
            self.base = float(arrival.params["rate_per_s"])
        elif self.kind == "trace":
            rows = run_scenario(sc, 0)["requests_arrived"]
            if rows <= 0:
                raise fail("workload.arrival", str(arrival.params.get("path")), "replays no request")
            self.base = rows / sc.horizon_s  # at the scenario's own speed
            self.scale0 = float(arrival.params.get("time_scale", 1.0))
            self.horizon0 = sc.horizon_s
            self.duration0 = arrival.params.get("duration_s")
        else:
            raise fail("workload.arrival.kind", self.kind, "must be poisson or trace for a goodput search")

    def overrides(self, rate: float) -> dict[str, Any]:
        if self.kind == "poisson":
            return {"workload.arrival.rate_per_s": rate}
        slower = self.base / rate  # > 1: the replay takes longer
        out = {"workload.arrival.time_scale": self.scale0 * slower, "horizon_s": self.horizon0 * slower}
        if self.duration0 is None:  # the rows of the first horizon_s seconds at the scenario's speed
            out["workload.arrival.duration_s"] = self.horizon0 / self.scale0
        return out


def attainment(sc: Scenario, overrides: Mapping[str, Any], seeds: Sequence[int]) -> dict[str, float]:
    """Mean of the reported KPIs over ``seeds`` at these overrides."""
    runs = [run_scenario(sc, s, overrides=overrides) for s in seeds]
    if any(r["placement_failures"] > 0 for r in runs):  # fewer replicas than compared: a wrong answer
        models = overrides.get("models") or [{}]
        raise fail("replicas", models[0], "do not all fit the scenario's nodes (placement failed)")
    return {k: float(np.nanmean([r[k] for r in runs])) for k in REPORTED}


def goodput(sc: Scenario, load: Load, base: Mapping[str, Any], seeds: Sequence[int], goal: float,
            rtol: float, max_probes: int = 40) -> tuple[float, dict[str, float], int]:  # fmt: skip
    """The largest load (req/s, to ``rtol``) whose mean attainment is >= ``goal``, the KPIs there, and
    the number of load levels tried. 0.0 if even 1/1000 of the scenario's load fails."""
    cache: dict[float, dict[str, float]] = {}

    def probe(rate: float) -> dict[str, float]:
        if rate not in cache:
            cache[rate] = attainment(sc, {**base, **load.overrides(rate)}, seeds)
        return cache[rate]

    lo, hi = 0.0, load.base
    while probe(hi)["slo_attainment"] >= goal:  # grow until it fails
        lo, hi = hi, hi * 2
        if len(cache) >= max_probes:
            raise fail("goodput", hi, f"req/s still meets the goal after {len(cache)} doublings")
    while lo == 0.0 and hi > load.base / 1000:  # shrink until it holds
        hi /= 2
        if probe(hi)["slo_attainment"] >= goal:
            lo, hi = hi, hi * 2
    while lo > 0.0 and (hi - lo) > rtol * hi and len(cache) < max_probes:
        mid = 0.5 * (lo + hi)
        if probe(mid)["slo_attainment"] >= goal:
            lo = mid
        else:
            hi = mid
    at = lo if lo > 0.0 else hi
    horizon = load.overrides(at).get("horizon_s", base.get("horizon_s", getattr(sc, "horizon_s", 0.0)))
    kpis = dict(probe(at))
    kpis["usd_per_hour"] = kpis.pop("cost_usd") * 3600.0 / horizon if horizon else float("nan")
    return lo, kpis, len(cache)


def run(
    scenario: str | Scenario = "default",
    *,
    replicas: int = 4,
    slo_scales: Sequence[float] = (1.0,),
    seeds: Sequence[int] = (0, 1, 2),
    goal: float = DEFAULT_ATTAINMENT,
    horizon_s: float = 600.0,
    rtol: float = 0.02,
    overrides: Mapping[str, Any] | None = None,
    decode_routing: str = "least_connections",
    gpus: Mapping[str, Sequence[str] | None] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One row per (SLO scale, deployment): its goodput and the KPIs there."""
    check_number("attainment", goal, gt=0, le=1)
    check_number("horizon_s", horizon_s, gt=0)
    check_number("rtol", rtol, gt=0, lt=1)
    for s in slo_scales:
        check_number("slo_scale", s, gt=0)
    if not seeds:
        raise fail("seeds", list(seeds), "must name at least one seed")
    sc = load_scenario(scenario, {**(overrides or {}), "horizon_s": horizon_s, "scaling": "static"})
    if len(sc.models) != 1:
        raise fail("scenario.models", [m.name for m in sc.models], "must be one model for a goodput search")
    model = sc.raw["models"][0]
    load = Load(sc)
    gpus_per_replica = sc.models[0].tensor_parallel
    rows = []
    for scale in slo_scales:
        classes = scaled_classes(sc, scale)
        for dep in deployments(replicas, gpus):
            t0 = time.perf_counter()
            base = {"models": [dep.model(model)], "workload.classes": classes}
            if dep.prefill:
                base["decode_routing"] = decode_routing
            rate, kpis, probes = goodput(sc, load, base, seeds, goal, rtol)
            n_gpus = replicas * gpus_per_replica
            row = {"slo_scale": scale, "deployment": dep.label, "prefill": dep.prefill, "decode": dep.decode,
                   "gpus": n_gpus, "goodput_req_s": rate, "goodput_per_gpu": rate / n_gpus, **kpis,
                   "requests_per_usd": rate * 3600.0 / kpis["usd_per_hour"] if kpis["usd_per_hour"] > 0 else 0.0,
                   "probes": probes, "wall_s": time.perf_counter() - t0}  # fmt: skip
            rows.append(row)
            if progress:
                print(f"  slo x{scale:g} {dep.label:<14} {rate:8.2f} req/s ({probes} loads, "
                      f"{row['wall_s']:.1f} s)", file=sys.stderr, flush=True)  # fmt: skip
    return rows


def markdown(rows: Sequence[Mapping[str, Any]], goal: float) -> str:
    """A table per SLO scale and the best disaggregated split against aggregated."""
    out = []
    for scale in dict.fromkeys(r["slo_scale"] for r in rows):
        sub = [r for r in rows if r["slo_scale"] == scale]
        out += [f"### SLO x {scale:g} (goodput at attainment >= {goal:g})", "",
                "| deployment | goodput (req/s) | per GPU | SLO attainment | TTFT p50 (s) | TTFT p99 (s) "
                "| TPOT mean (ms) | end to end mean (s) | $/h | requests per $ |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in sub:
            out.append(
                f"| {r['deployment']} | {r['goodput_req_s']:.2f} | {r['goodput_per_gpu']:.3f} | "
                f"{r['slo_attainment']:.3f} | {r['ttft_p50_s']:.2f} | {r['ttft_p99_s']:.2f} | "
                f"{1e3 * r['tpot_mean_s']:.1f} | {r['e2e_mean_s']:.2f} | {r['usd_per_hour']:.2f} | "
                f"{r['requests_per_usd']:.0f} |"
            )
        agg = sub[0]
        best = max(sub[1:], key=lambda r: r["goodput_req_s"])
        if best["goodput_req_s"] <= 0 and agg["goodput_req_s"] <= 0:
            verdict = (
                "No deployment meets the goal at any load (too few requests meet these SLOs even alone)."
            )
        elif agg["goodput_req_s"] <= 0:
            verdict = f"Best split {best['deployment']}; aggregated meets the goal at no load."
        else:
            ratio = best["goodput_req_s"] / agg["goodput_req_s"]
            cheap = max(sub[1:], key=lambda r: r["requests_per_usd"])
            per_usd = cheap["requests_per_usd"] / agg["requests_per_usd"]
            verdict = (f"Best split {best['deployment']}: {ratio:.2f} x aggregated's goodput; per dollar, "
                       f"{cheap['deployment']}: {per_usd:.2f} x aggregated's.")  # fmt: skip
        out += ["", verdict, ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.goodput", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--scenario", default="default", help=f"shipped name {shipped_scenarios()} or a YAML path")
    p.add_argument("--trace", default=None, help="trace file of a trace-replay scenario")
    p.add_argument("--replicas", type=int, default=4, help="replica budget shared by the pools (default 4)")
    p.add_argument("--slo-scale", type=float, nargs="+", default=[1.0],
                   help="SLO scales: every target times each (default 1)")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="workload seeds per load level")
    p.add_argument("--attainment", type=float, default=DEFAULT_ATTAINMENT, help="SLO attainment goal (0.9)")
    p.add_argument("--horizon-s", type=float, default=600.0, help="simulated seconds per run (default 600)")
    p.add_argument("--rtol", type=float, default=0.02, help="relative precision of the goodput (0.02)")
    for role in ("aggregated", "prefill", "decode"):
        p.add_argument(f"--{role}-gpus", nargs="+", default=None, metavar="TYPE",
                       help=f"GPU types of the {role} replicas (default: the model's own)")  # fmt: skip
    p.add_argument("--decode-routing", default="least_connections", help="the decode stage's router")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="scenario override, repeatable"
    )
    p.add_argument("--out", default=None, help="folder for goodput.csv and goodput.md")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        overrides = parse_set(args.set)
        if args.trace:
            overrides["workload.arrival.path"] = args.trace
        rows = run(args.scenario, replicas=args.replicas, slo_scales=args.slo_scale, seeds=args.seeds,
                   goal=args.attainment, horizon_s=args.horizon_s, rtol=args.rtol, overrides=overrides,
                   decode_routing=args.decode_routing,
                   gpus={r: getattr(args, f"{r}_gpus") for r in ("aggregated", "prefill", "decode")})  # fmt: skip
    except ConfigError as exc:
        p.exit(2, f"error: {exc}\n")
    took = time.perf_counter() - t0
    from agents.sb3 import git_sha  # torch is imported by that module: only once the search is done

    cmd = shlex.join(["python", "-m", "experiments.goodput", *(sys.argv[1:] if argv is None else argv)])
    head = [f"# Goodput: aggregated vs disaggregated on {args.replicas} replicas", "",
            f"- Command: `{cmd}`", f"- Git SHA: `{git_sha()}`",
            f"- Runtime: {took / 60:.1f} min ({len(rows)} searches, seeds {args.seeds})", ""]  # fmt: skip
    md = "\n".join(head) + "\n" + markdown(rows, args.attainment)
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "goodput.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        (out / "goodput.md").write_text(md + "\n")
        print(f"wrote {out / 'goodput.csv'} and goodput.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
