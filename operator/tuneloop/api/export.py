"""spec.output.export: what is produced from a gated adapter besides the adapter itself (a merged
safetensors model, a GGUF file for llama.cpp and Ollama), and how the GGUF file was checked."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tuneloop.api.common import WireModel

ExportFormat = Literal["merged", "gguf"]
GgufType = Literal["f16", "q8_0", "q4_0"]

# Share of answer tokens on which the GGUF model, reading the merged model's greedy answers, predicts the
# same next token: what each type is expected to keep (see docs/export.md for the measurements behind them).
EXPECTED_TOKEN_AGREEMENT: dict[str, float] = {"f16": 0.99, "q8_0": 0.95, "q4_0": 0.80}


class GgufSpec(WireModel):
    """The GGUF file: llama.cpp's own converter (f16, q8_0), then gguf's quantiser for the 4-bit types."""

    type: GgufType = Field("q8_0", description=(
        "f16 (lossless for a bf16/f16 model), q8_0 (8-bit, half the size, near lossless) or q4_0 "
        "(4-bit, a quarter of f16; answers do change)."))
    check_rows: int = Field(30, ge=1, le=10000, description=(
        "Test rows answered greedily by the merged model and by the GGUF file read back, to measure how often "
        "they agree."))
    min_token_agreement: float | None = Field(None, ge=0, le=1, description=(
        "Below this share of agreeing answer tokens the GGUF file is not registered. Default by type: f16 0.99, "
        "q8_0 0.95, q4_0 0.80."))

    def expected_agreement(self) -> float:
        if self.min_token_agreement is not None:
            return self.min_token_agreement
        return EXPECTED_TOKEN_AGREEMENT[self.type]


class ExportedFile(WireModel):
    """One exported artifact as written: a file (GGUF) or a folder (merged model)."""

    kind: ExportFormat = Field(description="merged or gguf.")
    uri: str = Field(description="Where it was written.")
    sha256: str = Field(description=(
        "sha256 of the file; of a folder, the sha256 of its `sha256sum`-style listing (one line per file, "
        "sorted by name)."))
    bytes: int = Field(ge=0, description="Size on disk, all files.")
    gguf_type: GgufType | None = Field(None, description="For a GGUF file: its type.")


class GgufAgreement(WireModel):
    """The GGUF file read back (transformers, gguf_file=) against the merged model, on the same test rows."""

    rows: int = Field(description="Test rows answered by both.")
    same_answers: float = Field(description="Share of rows whose greedy answers are identical.")
    token_agreement: float = Field(description=(
        "Share of the merged model's answer tokens that the GGUF model, fed the same prefix, predicts too "
        "(teacher-forced top-1 agreement)."))
    expected: float = Field(description="The least token agreement accepted for this type.")
    passed: bool = Field(description="token_agreement >= expected: the file is registered.")


class ExportResults(WireModel):
    """What the export stage produced (status.export)."""

    files: list[ExportedFile] = Field(default_factory=list, description="What was written, with its sha256.")
    agreement: GgufAgreement | None = Field(None, description="The GGUF file against the merged model.")
    skipped: str | None = Field(None, description="Why nothing was exported, e.g. the gate failed.")
    seconds: float | None = Field(None, description="Wall-clock seconds of the export workload.")
    summary: str | None = Field(None, description='One line, e.g. "gguf q8_0 145 MB, 0.98 token agreement".')

    def describe(self) -> str:
        """The summary line: the workload's log, the stage's condition and event, the reports."""
        parts = []
        for exported in self.files:
            size = f"{exported.bytes / 1e6:,.0f} MB"
            parts.append(f"gguf {exported.gguf_type} {size}" if exported.kind == "gguf" else f"merged {size}")
        agreement = self.agreement
        if agreement is not None:
            parts.append(f"GGUF vs merged on {agreement.rows} test rows: {agreement.token_agreement:.1%} of answer "
                         f"tokens agree (expected >= {agreement.expected:.0%}), {agreement.same_answers:.0%} "
                         "identical answers")
        return "; ".join(parts)
