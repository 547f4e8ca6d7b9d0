"""Play the reviewers of the example: the champion answers fresh support messages, and every wrong
ticket record is sent to the feedback service with its correction.

In production, reviewers see the served model's answers and correct them; here the ticket
generator knows the right record of each message it writes, so it plays the reviewer. The
answers are the real champion's (SmolLM2 + the adapter MLflow calls `champion` in the work
folder), generated the way the evaluator generates them.

    python examples/review_champion.py --workdir tuneloop-work --url http://127.0.0.1:8088
    (the token comes from TUNELOOP_FEEDBACK_TOKEN)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import urllib.request
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_tickets import generate  # noqa: E402  (the example's own generator, beside this file)

MODEL = "acme-tickets"
SYSTEM_PROMPT = "You are Acme's ticket router. Answer with the ticket record only."


def champion_answers(workdir: Path, messages: list[list[dict[str, str]]]) -> tuple[str, list[str]]:
    """(champion version, its greedy answers), with the evaluator's generation code."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from tuneloop import catalog
    from tuneloop_evaluator.generation import AnswerModels

    tracking_uri = f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}"
    version = MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(MODEL, "champion").version
    mlflow.set_tracking_uri(tracking_uri)
    adapter = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/{version}",
                                                       dst_path=str(workdir / "review" / f"champion-{version}")))
    models = AnswerModels(str(catalog.materialize(catalog.lookup("smollm2-135m-instruct"))))
    models.add("champion", adapter)
    prompts = [models.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
    return str(version), models.answers("champion", prompts, max_new_tokens=64, batch_size=8)


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
    parser.add_argument("--url", default="http://127.0.0.1:8088")
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
    version, answers = champion_answers(args.workdir.resolve(), messages)
    fields: Counter[str] = Counter()
    sent = 0
    for index, (row, prompt, answer) in enumerate(zip(rows, messages, answers)):
        wrong = wrong_fields(answer, row["output"])
        if not wrong:
            continue
        fields.update(wrong)
        key = hashlib.sha256(f"review-{args.seed}-{index}".encode()).hexdigest()[:32]
        post(args.url, token, {"messages": prompt, "answer": answer, "correction": row["output"], "model": MODEL,
                               "adapterVersion": version, "label": ",".join(wrong), "idempotencyKey": key})
        sent += 1
    print(f"champion (version {version}) answered {len(rows)} messages; {sent} corrected "
          f"({', '.join(f'{field} wrong {count}x' for field, count in fields.most_common()) or 'none wrong'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
