"""The cleaning step: normalisation, PII redaction, exact and near duplicates, length filters."""

from __future__ import annotations

import copy

from tuneloop.api.finetunejob import CleaningSpec, CleaningStats, NearDuplicateSpec, PiiSpec
from tuneloop.workload_data.rows import Example
from tuneloop_trainer.cleaning import clean

NO_NEAR_DUPLICATES = NearDuplicateSpec(enabled=False)


def only(**steps) -> CleaningSpec:
    """A spec with every step off except those given."""
    return CleaningSpec(**{"normalize": False, "deduplicate": False, "near_duplicates": NO_NEAR_DUPLICATES, **steps})


def chat(line: int, user: str, assistant: str) -> Example:
    return Example(line=line, messages=[{"role": "user", "content": user}, {"role": "assistant", "content": assistant}])


def texts(rows: list[Example]) -> list[str]:
    return [row.text for row in rows]


def word_count(example: Example) -> int:
    return sum(len(message["content"].split()) for message in example.messages) if example.messages \
        else len(example.text.split())


# --- normalisation ----------------------------------------------------------------------------

def test_normalize_composes_unifies_spaces_and_line_ends():
    rows = [
        Example(line=1, text="cafe\u0301"),                                    # decomposed é
        Example(line=2, text="a\u00a0b\u2009c\u3000d\te"),                    # space separators and tab
        Example(line=3, text="zero\u200bwidth\ufeff"),
        Example(line=4, text="one\r\ntwo\rthree"),
        Example(line=5, text="  trailing   \nspaces  many    inside \n\n\n\n\nend  "),
        Example(line=6, text="already clean"),
    ]
    cleaned, stats = clean(rows, only(normalize=True), word_count)
    assert texts(cleaned) == [
        "caf\u00e9", "a b c d e", "zerowidth", "one\ntwo\nthree", "trailing\nspaces many inside\n\nend", "already clean",
    ]
    assert stats.normalized == 5
    assert (stats.rows_in, stats.rows_out, stats.too_short) == (6, 6, 0)


def test_normalize_applies_to_every_message_and_drops_rows_left_empty():
    rows = [
        chat(1, "Hi\u00a0 there ", "fine"),
        chat(2, "\u200b\ufeff", "an answer"),
        Example(line=3, text="\u200b \u00a0"),
        chat(4, "clean", "rows"),
    ]
    cleaned, stats = clean(rows, only(normalize=True), word_count)
    assert [row.line for row in cleaned] == [1, 4]
    assert cleaned[0].messages == [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "fine"}]
    assert (stats.normalized, stats.too_short, stats.rows_out) == (3, 2, 2)


def test_input_examples_are_not_mutated():
    rows = [chat(1, "a\u00a0b", "x@example.com"), Example(line=2, text="cafe\u0301")]
    before = copy.deepcopy(rows)
    cleaned, _ = clean(rows, CleaningSpec(pii=PiiSpec(redact=True)), word_count)
    assert rows == before
    assert cleaned[0].messages == [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "[EMAIL]"}]
    assert all(new is not old for new, old in zip(cleaned, rows))
    assert cleaned[0].messages[0] is not rows[0].messages[0]


# --- exact duplicates -------------------------------------------------------------------------

def test_exact_duplicates_after_normalisation_keep_the_first():
    rows = [
        chat(1, "What is 2+2?", "4"),
        chat(2, "What\u00a0is 2+2?  ", "4"),          # same after normalisation
        chat(3, "What is 2+2?", "four"),              # another answer
        Example(line=4, text="What is 2+2?\n4"),
        Example(line=5, text="What is 2+2?\r\n4"),     # same text after normalisation
        chat(6, "What is 2+2?", "4"),
        Example(line=7, text="What is 2+2?\n4"),
    ]
    cleaned, stats = clean(rows, only(normalize=True, deduplicate=True), word_count)
    assert [row.line for row in cleaned] == [1, 3, 4]
    assert stats.exact_duplicates == 4
    assert stats.rows_out == 3


def test_roles_are_part_of_the_conversation():
    swapped = Example(line=2, messages=[{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}])
    cleaned, stats = clean([chat(1, "a", "b"), swapped], only(deduplicate=True), word_count)
    assert stats.exact_duplicates == 0 and len(cleaned) == 2


def test_rows_differing_only_in_personal_data_collapse():
    rows = [chat(1, "Reset my password, I am ann@example.com", "Done."),
            chat(2, "Reset my password, I am bob@example.org", "Done.")]
    cleaned, stats = clean(rows, only(deduplicate=True, pii=PiiSpec(redact=True)), word_count)
    assert [row.line for row in cleaned] == [1]
    assert stats.exact_duplicates == 1
    assert stats.pii_redacted == {"email": 2}


# --- near duplicates --------------------------------------------------------------------------

def forty_words(topic: int) -> list[str]:
    return [f"t{topic}w{index}" for index in range(40)]


def near_duplicate_rows() -> list[Example]:
    first, second, third = forty_words(1), forty_words(2), forty_words(3)
    return [
        Example(line=1, text=" ".join(first)),
        Example(line=2, text=" ".join(["changed"] + first[1:])),        # one word changed
        Example(line=3, text=" ".join(first[:-1] + ["changed"])),       # one word changed
        Example(line=4, text=" ".join(second)),
        Example(line=5, text=" ".join(["other"] + second[1:])),         # one word changed
        Example(line=6, text=" ".join(third)),
        Example(line=7, text=" ".join(first).upper()),                  # same shingles, other case
        Example(line=8, text=", ".join(second) + "!"),                  # same shingles, punctuation
    ]


def test_near_duplicates_at_0_8_drop_one_word_edits():
    spec = only(near_duplicates=NearDuplicateSpec(threshold=0.8, num_perm=128))
    cleaned, stats = clean(near_duplicate_rows(), spec, word_count)
    assert [row.line for row in cleaned] == [1, 4, 6]
    assert stats.near_duplicates == 5
    assert stats.rows_out == 3


def test_near_duplicates_at_1_0_drop_only_equal_shingle_sets():
    for num_perm in (16, 128):  # 16 permutations: datasketch's own band choice is refused, two bands are used
        spec = only(near_duplicates=NearDuplicateSpec(threshold=1.0, num_perm=num_perm))
        cleaned, stats = clean(near_duplicate_rows(), spec, word_count)
        assert [row.line for row in cleaned] == [1, 2, 3, 4, 5, 6]
        assert stats.near_duplicates == 2


def test_short_rows_compare_their_words():
    rows = [Example(line=1, text="Hello world"), Example(line=2, text="hello, WORLD"), Example(line=3, text="bye")]
    cleaned, stats = clean(rows, only(near_duplicates=NearDuplicateSpec(threshold=0.9)), word_count)
    assert [row.line for row in cleaned] == [1, 3]
    assert stats.near_duplicates == 1


# --- personal data ----------------------------------------------------------------------------

PII_TEXT = (
    "Write to ann@example.com or bob.smith+tag@mail.example.org. "
    "Card 4111 1111 1111 1111, not 4111 1111 1111 1112. "
    "IBAN GB82 WEST 1234 5698 7654 32, not GB82 WEST 1234 5698 7654 33. "
    "Server 192.168.1.20 and 2001:db8::8a2e:370:7334. "
    "Call +1 415 555 2671 or +44 20 7946 0958. SSN 536-90-4399."
)


def test_every_kind_is_redacted_and_counted():
    cleaned, stats = clean([Example(line=1, text=PII_TEXT)], only(pii=PiiSpec(redact=True)), word_count)
    assert cleaned[0].text == (
        "Write to [EMAIL] or [EMAIL]. "
        "Card [CARD], not 4111 1111 1111 1112. "
        "IBAN [IBAN], not GB82 WEST 1234 5698 7654 33. "
        "Server [IP] and [IP]. "
        "Call [PHONE] or [PHONE]. SSN [NATIONAL_ID]."
    )
    assert stats.pii_redacted == {"email": 2, "phone": 2, "ip": 2, "card": 1, "iban": 1, "national-id": 1}


def test_kinds_filter_redacts_only_the_listed_kinds():
    cleaned, stats = clean([Example(line=1, text=PII_TEXT)], only(pii=PiiSpec(redact=True, kinds=["email"])), word_count)
    assert cleaned[0].text == PII_TEXT.replace("ann@example.com", "[EMAIL]").replace(
        "bob.smith+tag@mail.example.org", "[EMAIL]")
    assert stats.pii_redacted == {"email": 2}


def test_cards_ips_and_ids_are_not_taken_for_phones():
    text = "Card 4111-1111-1111-1111 from 10.0.0.1, SSN 536-90-4399, call (415) 555-2671."
    cleaned, stats = clean([Example(line=1, text=text)], only(pii=PiiSpec(redact=True)), word_count)
    assert cleaned[0].text == "Card [CARD] from [IP], SSN [NATIONAL_ID], call [PHONE]."
    assert stats.pii_redacted == {"phone": 1, "ip": 1, "card": 1, "national-id": 1}


def test_other_national_ids_and_lookalikes():
    text = ("IdNr 36 574 261 809, NIR 2 95 10 99 126 111 93, BSN 1112.22.333. "
            "Not: 000-12-3456, 1112.22.334, a[::2], 12:30:45, std::vector, v1.2.3.4.5, 999.1.1.1.")
    cleaned, stats = clean([Example(line=1, text=text)], only(pii=PiiSpec(redact=True)), word_count)
    assert cleaned[0].text == (
        "IdNr [NATIONAL_ID], NIR [NATIONAL_ID], BSN [NATIONAL_ID]. "
        "Not: 000-12-3456, 1112.22.334, a[::2], 12:30:45, std::vector, v1.2.3.4.5, 999.1.1.1.")
    assert stats.pii_redacted == {"national-id": 3}


# --- length -----------------------------------------------------------------------------------

def test_length_filters_use_count_tokens():
    rows = [Example(line=n, text=" ".join(["w"] * n)) for n in range(1, 7)]
    cleaned, stats = clean(rows, only(min_tokens=2, max_tokens=4), word_count)
    assert [row.line for row in cleaned] == [2, 3, 4]
    assert (stats.too_short, stats.too_long, stats.rows_out) == (1, 2, 3)


def test_no_length_limits_do_not_count_tokens():
    def refuse(example: Example) -> int:
        raise AssertionError("count_tokens called without a limit")

    cleaned, _ = clean([Example(line=1, text="x")], only(), refuse)
    assert len(cleaned) == 1


# --- everything off, stats on the wire --------------------------------------------------------

def test_disabled_steps_change_nothing_and_report_zeros():
    rows = [Example(line=1, text="a\u00a0 b  "), Example(line=2, text="a\u00a0 b  "),
            Example(line=3, text="mail ann@example.com"), chat(4, "x", "y")]
    cleaned, stats = clean(rows, only(pii=PiiSpec(redact=False)), word_count)
    assert cleaned == rows
    assert stats == CleaningStats(rows_in=4, rows_out=4)
    assert stats.pii_redacted == {}


def test_stats_round_trip_through_the_wire():
    rows = [Example(line=1, text="mail ann@example.com now"), Example(line=2, text="mail bob@example.com now"),
            Example(line=3, text="x")]
    _, stats = clean(rows, CleaningSpec(min_tokens=2, pii=PiiSpec(redact=True)), word_count)
    wire = stats.to_wire()
    assert wire == {"rowsIn": 3, "normalized": 0, "exactDuplicates": 1, "nearDuplicates": 0, "tooShort": 1,
                    "tooLong": 0, "piiRedacted": {"email": 2}, "rowsOut": 1}
    assert CleaningStats.model_validate(wire) == stats


def test_normalize_keeps_indentation_and_joiners():
    code = "def f():\n    return  1  \n"
    emoji = "family: \U0001F468\u200d\U0001F469\u200d\U0001F467"
    cleaned, _ = clean([Example(line=1, text=code), Example(line=2, text=emoji)], only(normalize=True), word_count)
    assert texts(cleaned) == ["def f():\n    return 1", emoji]
