"""Request and response bodies of the feedback API (camelCase on the wire, unknown fields refused).

A feedback row is what a reviewer saw and what they made of it: the conversation up to the
user's last turn (`prompt`, or `messages` ending with a user message), the model's `answer`, and at
least one of the reviewer's `correction` (what the answer should have been), `verdict` (accept or
reject the answer as served) and `rating` (1 to 5). A row with a correction becomes one valid
training row (the conversation, then the correction as the assistant's turn), so the checks here
follow the trainer's; a correction that differs from the answer also becomes a preference pair
(correction chosen over answer), and verdicts and ratings become KTO rows (tuneloop_trainer.snapshot).
A correction equal to the answer is accepted: the reviewer confirmed the answer, and it is counted as
a confirmation. Accepting an answer while correcting it to something else says two opposite things,
so it is refused.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from tuneloop.api.common import WireModel
from tuneloop.feedback.limits import MAX_LABEL_CHARS, MAX_MESSAGES, MAX_NAME_CHARS, MAX_TEXT_BYTES


def check_encodable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"is not valid Unicode: a lone surrogate at character {error.start}") from None
    return value


def check_text(value: str) -> str:
    size = len(check_encodable(value).encode("utf-8"))
    if size > MAX_TEXT_BYTES:
        raise ValueError(f"is {size} bytes long; at most {MAX_TEXT_BYTES} bytes (UTF-8) are accepted")
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def single_line_checker(limit: int):
    """Names and labels: one line of printable characters, without surrounding spaces."""
    def check(value: str) -> str:
        check_encodable(value)
        if not value or len(value) > limit:
            raise ValueError(f"must be 1 to {limit} characters long, got {len(value)}")
        if value != value.strip():
            raise ValueError("must not start or end with a space")
        if any(unicodedata.category(character) == "Cc" for character in value):
            raise ValueError("must not contain control characters (line breaks, tabs, ...)")
        return value
    return check


Text = Annotated[str, AfterValidator(check_text)]
Name = Annotated[str, AfterValidator(single_line_checker(MAX_NAME_CHARS))]
Label = Annotated[str, AfterValidator(single_line_checker(MAX_LABEL_CHARS))]
Role = Literal["system", "user", "assistant"]
Verdict = Literal["accept", "reject"]
REVIEW_FIELDS = "correction, verdict or rating"


class ChatMessage(WireModel):
    role: Role
    content: Text


def check_turns(messages: list[ChatMessage]) -> None:
    """An optional system message, then user and assistant turns alternating, the last one a user's."""
    turns = messages[1:] if messages[0].role == "system" else messages
    if not turns:
        raise ValueError("has only a system message; the user's message must follow")
    offset = len(messages) - len(turns)
    for index, message in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if message.role != expected:
            raise ValueError(f"item {index + offset} has role {message.role!r} where {expected!r} was expected "
                             "(after an optional system message, turns alternate user, assistant, ...)")
    if turns[-1].role != "user":
        raise ValueError("must end with the user's message that the answer replied to")


class FeedbackIn(WireModel):
    """One review of a served answer. Give exactly one of `prompt` and `messages`, and at least one of
    `correction`, `verdict` and `rating`."""

    prompt: Text | None = Field(None, description="The user's message, for single-turn chats.")
    messages: list[ChatMessage] | None = Field(
        None, min_length=1, max_length=MAX_MESSAGES, validate_default=True,
        description="The conversation up to the user's last message: optional system message, then "
                    "user and assistant turns alternating, ending with the user.")
    answer: Text = Field(description="What the model answered (served).")
    correction: Text | None = Field(None, description=(
        "The reviewer's corrected answer: trained on, and preferred over the answer. Equal to the answer: a "
        "confirmation (the answer becomes a training row and a desirable KTO row)."))
    verdict: Verdict | None = Field(None, description=(
        "The reviewer's judgement of the answer as served: accept (a desirable KTO row) or reject (an "
        "undesirable one). accept with a correction that differs from the answer is refused."))
    rating: int | None = Field(None, ge=1, le=5, description=(
        "The reviewer's score of the answer as served, 1 (worst) to 5 (best): 4 and 5 make a desirable KTO "
        "row, 1 and 2 an undesirable one, 3 none."))
    model: Name = Field(description="The served model name, e.g. acme-tickets.")
    adapter_version: Name | None = Field(None, description="Registry version of the adapter that answered.")
    label: Label | None = Field(None, description="Short category chosen by the reviewer, e.g. wrong-tone.")
    idempotency_key: Name = Field(description="Chosen by the client; a retry with the same key stores nothing new.")

    @field_validator("messages")
    @classmethod
    def _prompt_or_messages(cls, messages: list[ChatMessage] | None, info: ValidationInfo) -> list[ChatMessage] | None:
        if "prompt" not in info.data:
            return messages  # prompt was given and is invalid; that error is reported already
        prompt = info.data["prompt"]
        if prompt is not None and messages is not None:
            raise ValueError("give either prompt or messages, not both")
        if prompt is None and messages is None:
            raise ValueError("one of prompt or messages is required")
        if messages is not None:
            check_turns(messages)
        return messages

    @field_validator("verdict")
    @classmethod
    def _accept_agrees_with_correction(cls, verdict: str | None, info: ValidationInfo) -> str | None:
        answer, correction = info.data.get("answer"), info.data.get("correction")
        if verdict == "accept" and correction is not None and answer is not None \
                and correction.strip() != answer.strip():
            raise ValueError("verdict 'accept' contradicts the correction, which differs from the answer: "
                             "send verdict 'reject' with the correction, or the correction alone")
        return verdict

    @model_validator(mode="after")
    def _reviewed(self) -> "FeedbackIn":
        if self.correction is None and self.verdict is None and self.rating is None:
            raise ValueError(f"give at least one of {REVIEW_FIELDS}: the reviewer's answer, or their judgement of "
                             "the served one")
        return self

    def stored_fields(self) -> dict[str, object]:
        """What a retry must repeat exactly to count as the same feedback (all but the key)."""
        return self.model_dump(exclude={"idempotency_key"})


class FeedbackCreated(WireModel):
    id: int
    duplicate: bool = Field(description="True when the key was seen before: nothing new was stored.")


class FeedbackRecord(WireModel):
    id: int
    idempotency_key: str
    model: str
    adapter_version: str | None = None
    label: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    answer: str = Field(description="What the model answered (served).")
    correction: str | None = Field(None, description="The reviewer's corrected answer; unset: none given.")
    verdict: Verdict | None = Field(None, description="accept or reject of the answer as served; unset: none given.")
    rating: int | None = Field(None, description="1 (worst) to 5 (best) for the answer as served; unset: none given.")
    created_at: datetime


class FeedbackPage(WireModel):
    items: list[FeedbackRecord]
    next_after_id: int | None = Field(description="Pass as afterId for the next page; null: this was the last.")


class FeedbackStats(WireModel):
    model: str | None = Field(description="The model counted; null: all models.")
    total: int = Field(description="Rows stored.")
    last_id: int = Field(description="Highest id stored (0: none); every smaller id is already visible.")
    after_id: int
    new: int = Field(description="Rows with an id above afterId: new since the snapshot that ended there.")
    confirmations: int = Field(description="Of the new rows, those whose correction equals the answer.")
    corrections: int = Field(description="Of the new rows, those with a correction (confirmations included).")
    accepted: int = Field(description="Of the new rows, those with verdict accept.")
    rejected: int = Field(description="Of the new rows, those with verdict reject.")
    ratings: int = Field(description="Of the new rows, those with a rating.")
    by_label: dict[str, int] = Field(description="New rows per label (rows without a label are not listed).")
    by_adapter_version: dict[str, int] = Field(description="New rows per adapter version (rows without one are "
                                                           "not listed).")


class FieldProblem(WireModel):
    field: str
    error: str


class ErrorBody(WireModel):
    error: str = Field(description="What was wrong, for a person.")
    field: str | None = Field(None, description="Where, e.g. body.correction or query.afterId.")
    problems: list[FieldProblem] = Field(default_factory=list, description="Every problem found, when several.")
