"""Smoke tests of the command-line scripts, run in-process with tiny budgets (``--help`` in a subprocess)."""

import ast
import json
import subprocess
import sys

import pytest

from experiments import benchmark, simulate
from tests.paths import REPO

ROOT = REPO


def script_modules() -> list[str]:
    """The modules of experiments/ that define a top-level ``main`` (each is run with ``python -m``)."""
    out = []
    for path in sorted((ROOT / "experiments").glob("*.py")):
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body):
            out.append(f"experiments.{path.stem}")
    return out


def test_the_script_list_is_found():
    assert {"experiments.plot", "experiments.reproduce", "experiments.simulate"} <= set(script_modules())


@pytest.mark.parametrize("module", script_modules())
def test_every_script_answers_help(module):
    res = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    assert "usage" in res.stdout.lower(), res.stdout


def test_plot_does_not_import_reproduce():
    code = "import sys, experiments.plot; sys.exit('experiments.reproduce' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr or "importing experiments.plot imported experiments.reproduce"


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
                "routing_steps_per_s", "placement_steps_per_s", "run_scenario_default_requests_per_s",
                "bare_loop_bursty_requests_per_s", "ppo_train_native_8_steps_per_s",
                "autoscale_bursty_native8_random_steps_per_s", "ppo_train_native_8_vs_env"):  # fmt: skip
        assert result[key] > 0, key
    assert 0 < result["run_scenario_default_vs_bare"] <= 1.5  # controllers cost something
