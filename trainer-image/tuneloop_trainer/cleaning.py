"""Clean the rows before the split: normalise text, redact personal data, drop duplicates and
near duplicates, filter by length. Every step reports what it did in CleaningStats.

National ids recognised (each written the way its validator formats it, and redacted only when the
python-stdnum validator accepts it): US SSN `123-45-6789`, German Steuer-IdNr `12 345 678 901` or
11 digits, French NIR `2 95 10 99 126 111 93` or 15 digits, Dutch BSN `1112.22.333` (dotted only: nine bare
digits pass its check too often).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections import Counter
from dataclasses import replace
from typing import Callable

import phonenumbers
from datasketch import MinHash, MinHashLSH
from stdnum import iban, luhn
from stdnum.de import idnr
from stdnum.fr import nir
from stdnum.nl import bsn
from stdnum.us import ssn

from tuneloop.api.finetunejob import PII_KINDS, CleaningSpec, CleaningStats, NearDuplicateSpec
from tuneloop.workload_data.rows import Example

TextMap = Callable[[str], str]

# Unicode category Zs (space separators) and tab become a plain space; zero-width spaces go. The
# zero-width joiners (U+200C, U+200D) stay: emoji sequences and Persian or Indic text need them.
SPACE_SEPARATORS = "\t\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
    "\u202f\u205f\u3000"
ZERO_WIDTH = "\u200b\ufeff"
SPACES_AND_ZERO_WIDTH = str.maketrans({**dict.fromkeys(SPACE_SEPARATORS, " "), **dict.fromkeys(ZERO_WIDTH)})
LINE_BREAK = re.compile(r"\r\n?|[\u0085\u2028\u2029]")

PLACEHOLDERS = {
    "email": "[EMAIL]", "phone": "[PHONE]", "ip": "[IP]",
    "card": "[CARD]", "iban": "[IBAN]", "national-id": "[NATIONAL_ID]",
}
EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?![\w-])")
# compact, or in groups of four with a shorter last group
IBAN = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?)(?![A-Za-z0-9])")
CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
IPV4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?!\.?\w)")
IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{1,4})?(?![\w:]|\.\d)")
# Alone, not inside a longer run of spaced digits.
ALONE_BEFORE, ALONE_AFTER = r"(?<!\w)(?<!\d )", r"(?!\w)(?! \d)"
NATIONAL_IDS: list[tuple[re.Pattern[str], Callable[[str], bool]]] = [
    (re.compile(r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])"), ssn.is_valid),
    (re.compile(ALONE_BEFORE + r"\d{2} ?\d{3} ?\d{3} ?\d{3}" + ALONE_AFTER), idnr.is_valid),
    (re.compile(ALONE_BEFORE + r"[12] ?\d{2} ?\d{2} ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}" + ALONE_AFTER),
     nir.is_valid),
    (re.compile(r"(?<![\w.])\d{4}\.\d{2}\.\d{3}(?!\.?\w)"), bsn.is_valid),
]


def clean(
    examples: list[Example], spec: CleaningSpec, count_tokens: Callable[[Example], int]
) -> tuple[list[Example], CleaningStats]:
    """Apply the enabled steps in order; returns new Example objects and what each step did."""
    rows = [map_text(example, lambda text: text) for example in examples]
    stats = CleaningStats(rows_in=len(examples), rows_out=0)
    if spec.normalize:
        rows = normalize_rows(rows, stats)
    if spec.pii.redact:
        rows = redact_rows(rows, spec.pii.kinds, stats)
    if spec.deduplicate:
        rows = drop_exact_duplicates(rows, stats)
    if spec.near_duplicates.enabled:
        rows = drop_near_duplicates(rows, spec.near_duplicates, stats)
    rows = filter_length(rows, spec.min_tokens, spec.max_tokens, count_tokens, stats)
    stats.rows_out = len(rows)
    return rows, stats


def describe(stats: CleaningStats) -> str:
    """What cleaning did, as a sentence: rows in and kept, what was removed, normalised and redacted."""
    removed = [f"{count:,} {label}" for label, count in (
        ("exact duplicates", stats.exact_duplicates), ("near duplicates", stats.near_duplicates),
        ("too short", stats.too_short), ("too long", stats.too_long)) if count]
    redacted = [f"{count:,} {kind}" for kind, count in stats.pii_redacted.items() if count]
    return (f"{stats.rows_in:,} rows in, {stats.rows_out:,} kept; removed "
            + (", ".join(removed) if removed else "none")
            + f"; {stats.normalized:,} normalised; personal data redacted: " + (", ".join(redacted) or "none"))


def map_text(example: Example, transform: TextMap) -> Example:
    """A new Example with `transform` applied to the text or to every message content."""
    if example.messages is not None:
        messages = [{**message, "content": transform(message["content"])} for message in example.messages]
        return replace(example, messages=messages)
    return replace(example, text=transform(example.text or ""))


def contents(example: Example) -> list[str]:
    if example.messages is not None:
        return [message["content"] for message in example.messages]
    return [example.text or ""]


# --- 1. normalise -----------------------------------------------------------------------------

def normalize_text(text: str) -> str:
    text = LINE_BREAK.sub("\n", text).translate(SPACES_AND_ZERO_WIDTH)
    text = unicodedata.normalize("NFC", text)
    text = re.sub(r"(?<=\S) {2,}", " ", text)  # leading indentation (code) is kept
    text = re.sub(r" +\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def normalize_rows(rows: list[Example], stats: CleaningStats) -> list[Example]:
    kept = []
    for row in rows:
        normalized = map_text(row, normalize_text)
        if contents(normalized) != contents(row):
            stats.normalized += 1
        if not all(contents(normalized)):
            stats.too_short += 1
        else:
            kept.append(normalized)
    return kept


# --- 2. redact personal data ------------------------------------------------------------------

def replace_valid(
    text: str, pattern: re.Pattern[str], is_valid: Callable[[str], bool], placeholder: str
) -> tuple[str, int]:
    """Replace the regex candidates that the validator accepts; returns the text and the count."""
    count = 0

    def substitute(match: re.Match[str]) -> str:
        nonlocal count
        if not is_valid(match.group()):
            return match.group()
        count += 1
        return placeholder

    return pattern.sub(substitute, text), count


def replace_iban(text: str, placeholder: str) -> tuple[str, int]:
    """IBANs; a candidate that swallowed a following capitalised word is retried without it."""
    count = 0

    def substitute(match: re.Match[str]) -> str:
        nonlocal count
        candidate = match.group()
        while candidate and not iban.is_valid(candidate):
            candidate = candidate.rpartition(" ")[0]
        if not candidate:
            return match.group()
        count += 1
        return placeholder + match.group()[len(candidate):]

    return IBAN.sub(substitute, text), count


def is_card(candidate: str) -> bool:
    return luhn.is_valid(re.sub(r"[ -]", "", candidate))


def is_ip(candidate: str) -> bool:
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    # `::`, `::1` and slices like `[::2]` in code are not addresses worth redacting
    return address.version == 4 or sum(1 for group in candidate.split(":") if group) >= 2


def replace_phones(text: str, placeholder: str) -> tuple[str, int]:
    """Numbers phonenumbers finds valid: international format, or US national format."""
    matches = list(phonenumbers.PhoneNumberMatcher(text, "US"))
    for match in reversed(matches):
        text = text[: match.start] + placeholder + text[match.end:]
    return text, len(matches)


def redact_text(text: str, kinds: list[str], counts: Counter[str]) -> str:
    """Kinds run in a fixed order: IBANs and cards before phones, IPs before phones."""
    def run(kind: str, replacer: Callable[[str], tuple[str, int]]) -> None:
        nonlocal text
        if kind in kinds:
            text, found = replacer(text)
            counts[kind] += found

    run("email", lambda t: EMAIL.subn(PLACEHOLDERS["email"], t))
    run("iban", lambda t: replace_iban(t, PLACEHOLDERS["iban"]))
    run("card", lambda t: replace_valid(t, CARD, is_card, PLACEHOLDERS["card"]))
    for pattern, is_valid in NATIONAL_IDS:
        run("national-id", lambda t: replace_valid(t, pattern, is_valid, PLACEHOLDERS["national-id"]))
    run("ip", lambda t: replace_valid(t, IPV6, is_ip, PLACEHOLDERS["ip"]))
    run("ip", lambda t: replace_valid(t, IPV4, is_ip, PLACEHOLDERS["ip"]))
    run("phone", lambda t: replace_phones(t, PLACEHOLDERS["phone"]))
    return text


def redact_rows(rows: list[Example], kinds: list[str], stats: CleaningStats) -> list[Example]:
    counts: Counter[str] = Counter()
    redacted = [map_text(row, lambda text: redact_text(text, kinds, counts)) for row in rows]
    stats.pii_redacted = {kind: counts[kind] for kind in PII_KINDS if counts[kind] > 0}
    return redacted


# --- 3. exact duplicates ----------------------------------------------------------------------

def row_key(example: Example) -> tuple:
    if example.messages is not None:
        return ("messages", tuple((message["role"], message["content"]) for message in example.messages))
    return ("text", example.text)


def drop_exact_duplicates(rows: list[Example], stats: CleaningStats) -> list[Example]:
    seen: set[tuple] = set()
    kept = []
    for row in rows:
        key = row_key(row)
        if key in seen:
            stats.exact_duplicates += 1
            continue
        seen.add(key)
        kept.append(row)
    return kept


# --- 4. near duplicates -----------------------------------------------------------------------

MINHASH_SEED = 1


def shingles(example: Example) -> set[str]:
    """Word 3-grams of the lowercased conversation; the words themselves for shorter rows."""
    text = "\n".join(contents(example)).lower()
    words = re.findall(r"\w+", text)
    if len(words) < 3:
        return set(words) or {text}
    return {" ".join(words[index:index + 3]) for index in range(len(words) - 2)}


def make_lsh(spec: NearDuplicateSpec) -> MinHashLSH:
    try:
        return MinHashLSH(threshold=spec.threshold, num_perm=spec.num_perm)
    except ValueError:
        # datasketch wants a single band for thresholds near 1 (or few permutations) and refuses it;
        # two bands still find every pair with equal signatures, and the Jaccard check below decides.
        return MinHashLSH(num_perm=spec.num_perm, params=(2, spec.num_perm // 2))


def drop_near_duplicates(rows: list[Example], spec: NearDuplicateSpec, stats: CleaningStats) -> list[Example]:
    lsh = make_lsh(spec)
    kept_signatures: dict[int, MinHash] = {}
    kept = []
    for index, row in enumerate(rows):
        signature = MinHash(num_perm=spec.num_perm, seed=MINHASH_SEED)
        signature.update_batch([shingle.encode("utf-8") for shingle in shingles(row)])
        if any(kept_signatures[other].jaccard(signature) >= spec.threshold for other in lsh.query(signature)):
            stats.near_duplicates += 1
            continue
        lsh.insert(index, signature)
        kept_signatures[index] = signature
        kept.append(row)
    return kept


# --- 5. length --------------------------------------------------------------------------------

def filter_length(
    rows: list[Example], min_tokens: int, max_tokens: int | None,
    count_tokens: Callable[[Example], int], stats: CleaningStats,
) -> list[Example]:
    if min_tokens <= 0 and max_tokens is None:
        return rows
    kept = []
    for row in rows:
        tokens = count_tokens(row)
        if tokens < min_tokens:
            stats.too_short += 1
        elif max_tokens is not None and tokens > max_tokens:
            stats.too_long += 1
        else:
            kept.append(row)
    return kept
