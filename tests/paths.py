"""Where the tests find the repository and the shared data beside it (``../shared``)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
AZURE_CONV_TRACE = SHARED / "traces" / "AzureLLMInferenceTrace_conv.csv"
MOONCAKE_CONV_TRACE = SHARED / "traces" / "mooncake_conversation_trace_first30min.jsonl"
A100_PROFILES = SHARED / "profiles" / "a100"
