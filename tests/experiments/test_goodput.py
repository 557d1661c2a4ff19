"""experiments.goodput: the load search, the deployments it compares, trace speed-ups, the script."""

import pytest

from envs.sim import ConfigError, load_scenario, run_scenario
from experiments import goodput as G
from tests.paths import AZURE_CONV_TRACE


def test_deployments_cover_every_split_of_the_budget():
    deps = G.deployments(4)
    assert [(d.prefill, d.decode) for d in deps] == [(0, 4), (1, 3), (2, 2), (3, 1)]
    assert [d.label for d in deps] == ["aggregated 4", "P1:D3", "P2:D2", "P3:D1"]
    base = {"name": "llama-3-8b", "replicas": 2, "max_batch": 128}
    assert deps[0].model(base) == {"name": "llama-3-8b", "max_batch": 128, "replicas": 4, "min_replicas": 4,
                                   "max_replicas": 4}  # fmt: skip
    pd = deps[1].model(base)
    assert (
        pd["serving"] == "disaggregated"
        and pd["prefill"]["replicas"] == 1
        and pd["decode"]["max_replicas"] == 3
    )
    ha = G.deployments(2, {"prefill": ["h100-sxm-80gb"], "decode": None})[1].model(base)
    assert ha["prefill"]["gpu_types"] == ["h100-sxm-80gb"] and "gpu_types" not in ha["decode"]
    with pytest.raises(ConfigError, match="replicas"):
        G.deployments(1)


class _Curve:
    """A load whose attainment is 1 up to ``edge`` req/s and 0.5 above (what the search must find)."""

    def __init__(self, edge: float, base: float = 10.0):
        self.edge, self.base, self.kind, self.seen = edge, base, "poisson", []

    def overrides(self, rate: float) -> dict:
        return {"rate": rate}


@pytest.mark.parametrize("edge", [0.37, 7.3, 10.0, 55.0])
def test_search_brackets_the_edge_to_the_tolerance(monkeypatch, edge):
    curve = _Curve(edge)

    def fake(sc, overrides, seeds):
        curve.seen.append(overrides["rate"])
        return dict.fromkeys(G.REPORTED, 0.0) | {"slo_attainment": 1.0 if overrides["rate"] <= edge else 0.5}

    monkeypatch.setattr(G, "attainment", fake)
    rate, kpis, probes = G.goodput(None, curve, {}, [0], goal=0.9, rtol=0.01)
    assert rate <= edge and rate >= edge * (1 - 0.01) * 0.99 and kpis["slo_attainment"] == 1.0
    assert probes == len(set(curve.seen)) <= 40


def test_search_gives_zero_when_no_load_meets_the_goal(monkeypatch):
    monkeypatch.setattr(G, "attainment", lambda sc, o, s: dict.fromkeys(G.REPORTED, 0.0))
    rate, _, _ = G.goodput(None, _Curve(0.0), {}, [0], goal=0.9, rtol=0.02)
    assert rate == 0.0


def test_a_trace_replays_the_same_rows_at_every_load():
    sc = load_scenario("azure-conv", {"workload.arrival.path": str(AZURE_CONV_TRACE), "horizon_s": 120})
    load = G.Load(sc)
    base = run_scenario(sc, 0)["requests_arrived"]
    assert load.base == pytest.approx(base / 120)
    for rate in (load.base / 3, 2 * load.base):
        kpis = run_scenario(sc, 0, overrides=load.overrides(rate))
        assert kpis["requests_arrived"] == base
    with pytest.raises(ConfigError, match=r"workload\.arrival\.kind: 'onoff'"):
        G.Load(load_scenario("bursty"))


def test_slo_scale_multiplies_every_target():
    sc = load_scenario("multi-model")
    classes = G.scaled_classes(sc, 0.5)
    for c, raw in zip(sc.workload.classes, classes, strict=True):
        for key in ("ttft_s", "tpot_s", "e2e_s"):
            want = getattr(c.slo, key)
            assert raw["slo"].get(key) == (None if want is None else want * 0.5)


def test_script_finds_a_real_goodput_and_writes_its_files(tmp_path, capsys):
    out = tmp_path / "gp"
    assert (
        G.main(["--replicas", "2", "--horizon-s", "120", "--seeds", "0", "--rtol", "0.1", "--out", str(out)])
        == 0
    )
    rows = (out / "goodput.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("slo_scale,deployment")
    md = (out / "goodput.md").read_text()
    assert "| aggregated 2 |" in md and "| P1:D1 |" in md and "Git SHA" in md
    agg = next(r for r in rows[1:] if ",aggregated 2," in r).split(",")
    rate = float(agg[5])
    assert rate > 0
    # the reported load really meets the goal
    sc = load_scenario("default", {"horizon_s": 120, "scaling": "static", "models": [G.Deployment(0, 2).model(
        load_scenario("default").raw["models"][0])]})  # fmt: skip
    assert run_scenario(sc, 0, overrides={"workload.arrival.rate_per_s": rate})["slo_attainment"] >= 0.9
    with pytest.raises(ConfigError, match=r"replicas: 20 .*do not fit"):
        G.run("default", replicas=20, horizon_s=30, seeds=[0], progress=False)  # 16 GPUs
    with pytest.raises(SystemExit):
        G.main(["--attainment", "1.5"])
    assert "attainment" in capsys.readouterr().err
