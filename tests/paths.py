"""Where the tests find the repository and the shared data beside it (``../shared``)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
AZURE_CONV_TRACE = SHARED / "traces" / "AzureLLMInferenceTrace_conv.csv"
MOONCAKE_CONV_TRACE = SHARED / "traces" / "mooncake_conversation_trace_first30min.jsonl"
A100_PROFILES = SHARED / "profiles" / "a100"

#: The trace each trace-replay scenario needs (its ``workload.arrival.path``).
SCENARIO_TRACES = {"azure-conv": AZURE_CONV_TRACE, "mooncake-conv": MOONCAKE_CONV_TRACE}


def trace_overrides(name: str) -> dict:
    """Overrides giving shipped scenario ``name`` its trace (nested form; empty if it needs none)."""
    path = SCENARIO_TRACES.get(name)
    return {} if path is None else {"workload": {"arrival": {"path": str(path)}}}
