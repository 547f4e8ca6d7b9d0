"""Play the reviewers of the example: the champion answers fresh support messages; every wrong ticket
record is sent to the feedback service as rejected, with its correction, and every right one as accepted.

In production, reviewers see the served model's answers and correct them; here the ticket
generator knows the right record of each message it writes, so it plays the reviewer. The
answers come from the served champion: `tuneloop serve --local` over the run MLflow calls
`champion` (SmolLM2 + its adapter), an OpenAI-compatible endpoint answering as the evaluator does.

    tuneloop serve --local acme-tickets --workdir tuneloop-work --port 8000 &
    python examples/review_champion.py --workdir tuneloop-work --model-url http://127.0.0.1:8000/v1 \
        --url http://127.0.0.1:8088
    (the feedback token comes from TUNELOOP_FEEDBACK_TOKEN)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_tickets import generate  # noqa: E402  (the example's own generator, beside this file)

MODEL = "acme-tickets"
SYSTEM_PROMPT = "You are Acme's ticket router. Answer with the ticket record only."


class ModelUnavailable(Exception):
    pass


def champion_version(workdir: Path) -> str:
    from tuneloop.registry.aliases import version_of_alias
    from tuneloop.runtime.local import local_mlflow

    return version_of_alias(local_mlflow(workdir)[0], MODEL, "champion")


def served_answers(model_url: str, champion: str, messages: list[list[dict[str, str]]]) -> list[str]:
    """The endpoint's `tuned` model's answers, once it is shown to serve the champion's adapter."""
    from openai import APIConnectionError, OpenAI

    client = OpenAI(base_url=model_url, api_key="local", timeout=300, max_retries=0)
    try:
        served = next((model for model in client.models.list() if model.id == "tuned"), None)
    except APIConnectionError as error:
        raise ModelUnavailable(f"no model endpoint at {model_url} ({error.__cause__ or error}): start it with "
                               f"tuneloop serve --local {MODEL}") from error
    details = (served.model_extra or {}).get("tuneloop", {}) if served else {}
    if (details.get("registeredModel"), details.get("registeredVersion")) != (MODEL, champion):
        raise ModelUnavailable(f"{model_url} serves {details.get('registeredModel')} version "
                         f"{details.get('registeredVersion')} (run {details.get('run')}), but {MODEL}@champion is "
                         f"version {champion}: serve the champion's run")

    def ask(conversation: list[dict[str, str]]) -> str:
        completion = client.chat.completions.create(model="tuned", messages=conversation, max_tokens=64)
        return completion.choices[0].message.content

    with ThreadPoolExecutor(max_workers=8) as pool:  # the server answers waiting requests in one batch
        return list(pool.map(ask, messages))


def wrong_fields(answer: str, correction: str) -> list[str]:
    expected = json.loads(correction)
    try:
        given = json.loads(answer)
    except ValueError:
        return ["format"]
    if not isinstance(given, dict):
        return ["format"]
    return [key for key, value in expected.items() if given.get(key) != value]


def post(url: str, token: str, row: dict) -> dict:
    request = urllib.request.Request(f"{url}/v1/feedback", data=json.dumps(row).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("tuneloop-work"))
    parser.add_argument("--url", default="http://127.0.0.1:8088", help="the feedback service")
    parser.add_argument("--model-url", default="http://127.0.0.1:8000/v1",
                        help="the champion's OpenAI-compatible endpoint (tuneloop serve --local)")
    parser.add_argument("--messages", type=int, default=60, help="fresh support messages the champion answers")
    parser.add_argument("--seed", type=int, default=424242, help="not the training data's seed: unseen messages")
    args = parser.parse_args()
    token = os.environ.get("TUNELOOP_FEEDBACK_TOKEN")
    if not token:
        print("set TUNELOOP_FEEDBACK_TOKEN to the feedback service's token", file=sys.stderr)
        return 2
    rows = generate(args.messages, args.seed)
    messages = [[{"role": "system", "content": SYSTEM_PROMPT},
                 {"role": "user", "content": f"{row['instruction']}\n\n{row['input']}"}] for row in rows]
    from tuneloop.registry.aliases import AliasNotFound

    try:
        version = champion_version(args.workdir.resolve())
        answers = served_answers(args.model_url, version, messages)
    except (AliasNotFound, ModelUnavailable) as error:
        print(error, file=sys.stderr)
        return 1
    fields: Counter[str] = Counter()
    corrected = accepted = 0
    for index, (row, prompt, answer) in enumerate(zip(rows, messages, answers)):
        wrong = wrong_fields(answer, row["output"])
        key = hashlib.sha256(f"review-{args.seed}-{index}".encode()).hexdigest()[:32]
        item = {"messages": prompt, "answer": answer, "model": MODEL, "adapterVersion": version, "idempotencyKey": key}
        if wrong:  # the served answer is rejected and the right record given: a training row and a preference pair
            fields.update(wrong)
            post(args.url, token, {**item, "verdict": "reject", "correction": row["output"], "label": ",".join(wrong)})
            corrected += 1
        else:  # accepted as served: a desirable example for KTO
            post(args.url, token, {**item, "verdict": "accept"})
            accepted += 1
    print(f"champion (version {version}) answered {len(rows)} messages; {corrected} corrected "
          f"({', '.join(f'{field} wrong {count}x' for field, count in fields.most_common()) or 'none wrong'}); "
          f"{accepted} accepted as served")
    return 0


if __name__ == "__main__":
    sys.exit(main())
