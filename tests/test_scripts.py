"""Smoke tests of the command-line scripts, run in-process with tiny budgets."""

import json

import pytest

from experiments import benchmark, simulate


def test_simulate_prints_a_kpi_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "kpis.json"
    results = simulate.main(["--seeds", "0", "1", "--set", "horizon_s=120", "--json", str(out)])
    text = capsys.readouterr().out
    assert "| slo_attainment" in text and "mean" in text
    saved = json.loads(out.read_text())
    assert saved["seeds"] == [0, 1]
    assert saved["kpis"]["requests_arrived"] == results["requests_arrived"]
    assert results["requests_arrived"][0] != results["requests_arrived"][1]


def test_simulate_rejects_bad_overrides_with_the_key_path(capsys):
    with pytest.raises(SystemExit) as exc:
        simulate.main(["--set", "workload.arrival.rate_per_s=-3"])
    assert exc.value.code == 2
    assert "workload.arrival.rate_per_s: -3 must be > 0" in capsys.readouterr().err


def test_benchmark_quick_ends_with_a_json_line_of_measurements(capsys):
    benchmark.main(["--quick"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    for key in ("mmc_requests_per_s", "simpy_mmc_requests_per_s", "llm_requests_per_s", "autoscale_steps_per_s",
                "routing_steps_per_s", "placement_steps_per_s"):  # fmt: skip
        assert result[key] > 0, key
