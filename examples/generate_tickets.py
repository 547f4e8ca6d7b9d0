"""Generate the bundled example dataset: support messages -> Acme's compact ticket JSON.

The output contract is company-specific on purpose: account ids are the customer's
initials plus the account number, categories and actions are internal codes, and the
priority comes from how urgent the writer sounds. A base model cannot guess it; a few
hundred examples teach it.

    python examples/generate_tickets.py            # rewrites examples/data/tickets.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

COMPANIES = [
    "Norwind Logistics", "Bluefin Analytics", "Cedar Health", "Orbit Foods", "Harbor Legal",
    "Pinecrest Energy", "Quartz Media", "Redwood Clinics", "Summit Freight", "Vantage Bank",
    "Willow Pharma", "Atlas Robotics", "Beacon Insurance", "Crimson Retail", "Delta Textiles",
    "Ember Studios", "Falcon Aerospace", "Granite Builders", "Helix Genomics", "Iris Optics",
    "Juniper Schools", "Kestrel Travel", "Lumen Labs", "Maple Dairy", "Nimbus Cloud",
    "Oak Valley Farms", "Prism Telecom", "Ridge Mining", "Solace Care", "Tidal Marine",
]
PEOPLE = [
    "Maria Lopez", "James Chen", "Aisha Khan", "Tom Becker", "Sofia Rossi", "Liam O'Brien",
    "Yuki Tanaka", "Noah Schmidt", "Emma Dubois", "Ravi Patel", "Olga Ivanova", "Lucas Silva",
]

# (category code, action code, ways a customer describes it)
ISSUES = [
    ("BIL", "REFUND", ["we were charged twice for the {month} invoice",
                       "the {month} invoice was billed two times",
                       "a duplicate payment went out for {month}"]),
    ("BIL", "CORRECT", ["the {month} invoice shows the wrong amount",
                        "our {month} bill has a pricing error",
                        "the total on the {month} invoice is too high"]),
    ("SHP", "RESEND", ["our parcel from {month} never arrived",
                       "the shipment we ordered in {month} is lost",
                       "tracking for the {month} delivery stopped updating weeks ago"]),
    ("SHP", "REPLACE", ["the boxes delivered in {month} arrived damaged",
                        "half of the {month} order came broken",
                        "the goods from the {month} delivery are crushed"]),
    ("TEC", "RESET", ["nobody on our team can log in since {month}",
                      "our admin password stopped working in {month}",
                      "the login page rejects our credentials since {month}"]),
    ("TEC", "ESCALATE", ["the API has returned server errors since {month}",
                         "your app crashes on start since the {month} update",
                         "the export job has failed every night since {month}"]),
    ("ACC", "CLOSE", ["we want to close our account at the end of {month}",
                      "please cancel our subscription from {month}",
                      "we are leaving and need the account shut down in {month}"]),
    ("ACC", "UPDATE", ["our billing email changed in {month}",
                       "we moved offices in {month} and need the address updated",
                       "the contact person on file changed in {month}"]),
]
URGENCY = [
    ("P1", ["This is urgent.", "Please fix this today.", "It is blocking our business.", "We need this ASAP."]),
    ("P2", ["Please look at it this week.", "We would like an answer soon.", "It is becoming a problem."]),
    ("P3", ["No rush.", "Whenever you have time.", "Not urgent.", ""]),
]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
OPENINGS = ["Hi,", "Hello,", "Good morning,", "Dear support,", "Hey team,", ""]
INTROS = [
    "this is {person} from {company} (account {number}).",
    "{person} here, {company}, account no. {number}.",
    "I'm writing for {company}, account #{number}.",
    "{company} account {number} here.",
]
INSTRUCTION = "Convert this support message into an Acme ticket record."


def account_code(company: str, number: int) -> str:
    initials = "".join(word[0] for word in company.split()[:2]).upper()
    return f"{initials}-{number}"


def make_row(rng: random.Random) -> dict:
    company = rng.choice(COMPANIES)
    number = rng.randint(10000, 99999)
    category, action, phrasings = rng.choice(ISSUES)
    priority, urgency_phrases = rng.choice(URGENCY)
    intro = rng.choice(INTROS).format(person=rng.choice(PEOPLE), company=company, number=number)
    problem = rng.choice(phrasings).format(month=rng.choice(MONTHS))
    opening = rng.choice(OPENINGS)
    if not opening:
        intro = intro[0].upper() + intro[1:]
    parts = [opening, intro,
             problem[0].upper() + problem[1:] + ".", rng.choice(urgency_phrases)]
    message = " ".join(part for part in parts if part)
    record = {"acct": account_code(company, number), "cat": category, "act": action, "pri": priority}
    return {"instruction": INSTRUCTION, "input": message,
            "output": json.dumps(record, separators=(",", ":"))}


def generate(rows: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [make_row(rng) for _ in range(rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--seed", type=int, default=20261123)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "tickets.jsonl")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as handle:
        for row in generate(args.rows, args.seed):
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {args.rows} rows to {args.out}")


if __name__ == "__main__":
    main()
