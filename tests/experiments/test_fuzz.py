"""The fuzz harness: a bounded run finds no crash, hang or silent acceptance, and it would see them."""

from __future__ import annotations

import json

from experiments import fuzz


def test_a_bounded_fuzz_run_is_clean(tmp_path, capsys):
    counts = fuzz.main(["--cases", "300", "--seed", "11", "--out", str(tmp_path), "--timeout-s", "120"])
    out = capsys.readouterr().out
    assert sum(counts.values()) == 300, out
    assert counts["crash"] == counts["hang"] == counts["silently_wrong"] == 0, out
    assert counts["ok"] > 50 and counts["named_error"] > 50  # both sides are exercised
    assert json.loads((tmp_path / "summary.json").read_text()) == counts


def test_the_harness_classifies_crashes_hangs_deaths_and_memory(tmp_path):
    cases = [
        {"kind": "selftest", "index": i, "mode": m}
        for i, m in enumerate(["raise", "hang", "die", "allocate", "ok"])
    ]
    results = fuzz.run(cases, workers=2, timeout_s=20.0, memory_mib=2048, scratch=tmp_path, progress=False)
    assert [r["outcome"] for r in results] == ["crash", "hang", "crash", "crash", "ok"]
    assert "KeyError" in results[0]["detail"] and "worker died" in results[2]["detail"]
    assert "MemoryError" in results[3]["detail"]
    repro = fuzz.write_repro(results[0], tmp_path / "repro")
    assert "run_case" in repro.read_text() and repro.name == "crash-selftest-0.py"
