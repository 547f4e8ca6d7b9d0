"""`tuneloop serve --local` and `tuneloop chat` on a run folder of SmolLM2 with a LoRA adapter.

The adapter is freshly made, with random (not zero) LoRA weights so that it changes the answers:
what matters here is that base and tuned answer exactly as the evaluator answered, not how well.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from local_model_server import local_model_server
from tuneloop import catalog

REPO = Path(__file__).resolve().parents[1]
RUN = "tickets"
SYSTEM_PROMPT = "You are Acme's ticket router. Answer with the ticket record only."
QUESTIONS = ("Subject: VPN down\nThe VPN drops every five minutes; the whole sales team is affected.",
             "Subject: invoice\nPlease resend invoice 4411, the PDF is empty.")
QUESTION = QUESTIONS[0]
MAX_TOKENS = 24


def write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")


def random_lora_adapter(model_path: Path, folder: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(folder)
    return folder


def write_run(workdir: Path, name: str, spec_hash: str, model_path: Path, status: dict) -> Path:
    """A run folder as `tuneloop run --local` leaves it: status.json and the train workload."""
    folder = workdir / name / spec_hash
    write_json(folder / f"{name}-train" / "workload.json", {
        "job": f"default/{name}", "modelPath": str(model_path), "datasetPath": str(workdir / "data.jsonl"),
        "dataset": {"uri": "data.jsonl", "systemPrompt": SYSTEM_PROMPT}, "method": {"type": "lora"},
        "training": {}, "outputDir": str(folder / f"{name}-train" / "output")})
    write_json(folder / "status.json", status)
    return folder


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One finished run with an adapter (`tickets`), one still training (`pending`)."""
    workdir = tmp_path_factory.mktemp("serving") / "tuneloop-work"
    model_path = catalog.materialize(catalog.lookup("smollm2-135m-instruct"))
    folder = workdir / RUN / "0123456789ab"
    adapter = random_lora_adapter(model_path, folder / f"{RUN}-train" / "output" / "adapter")
    write_run(workdir, RUN, "0123456789ab", model_path, {
        "phase": "Succeeded",
        "training": {"validationLossBefore": 2.0, "validationLossAfter": 1.0, "trainLoss": 1.0, "steps": 10,
                     "tokensPerSecond": 100.0, "seconds": 10.0, "adapterUri": adapter.as_uri(),
                     "testUri": (folder / "hold-out.jsonl").as_uri()},
        "registry": {"modelName": "acme-tickets", "version": "3", "uri": "models:/acme-tickets/3"}})
    write_run(workdir, "pending", "fedcba987654", model_path,
              {"phase": "Training", "progress": {"step": 3, "totalSteps": 10}})
    return workdir


@pytest.fixture(scope="module")
def evaluator_answers(workdir, tmp_path_factory) -> dict[tuple[str, str], str]:
    """(model, question) -> the evaluator's answer: its hold-out loading, prompt rendering and generation."""
    from tuneloop.api.evaluation import EvaluationSpec
    from tuneloop.workload_data.chat import render_prompt
    from tuneloop_evaluator.evaluate import CANDIDATE, load_examples
    from tuneloop_evaluator.generation import AnswerModels

    hold_out = tmp_path_factory.mktemp("hold-out") / "hold-out.jsonl"
    hold_out.write_text("".join(json.dumps({"instruction": question, "input": "", "output": "{}"}) + "\n"
                                for question in QUESTIONS), encoding="utf-8")
    examples = load_examples(str(hold_out), SYSTEM_PROMPT, None)
    folder = workdir / RUN / "0123456789ab"
    models = AnswerModels(str(catalog.materialize(catalog.lookup("smollm2-135m-instruct"))))
    models.add(CANDIDATE, folder / f"{RUN}-train" / "output" / "adapter")
    prompts = [render_prompt(models.tokenizer, example) for example in examples]
    batch_size = EvaluationSpec().batch_size
    answers = {}
    for model, name in (("base", None), ("tuned", CANDIDATE)):
        answers.update({(model, question): answer for question, answer
                        in zip(QUESTIONS, models.answers(name, prompts, MAX_TOKENS, batch_size), strict=True)})
    for question in QUESTIONS:  # or the test proves nothing
        assert answers["base", question] != answers["tuned", question], "the adapter must change the answer"
    return answers


@pytest.fixture(scope="module")
def server(workdir):
    with local_model_server(workdir, RUN) as base_url:
        yield base_url


def tuneloop(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuneloop.cli", *args], cwd=REPO, input=stdin,
                          capture_output=True, text=True, timeout=600)


def test_the_server_lists_base_and_tuned(server):
    models = {model.id: model for model in OpenAI(base_url=server, api_key="local").models.list()}
    assert set(models) == {"base", "tuned"}
    assert models["tuned"].model_extra["tuneloop"]["registeredVersion"] == "3"
    assert models["tuned"].model_extra["tuneloop"]["systemPrompt"] == SYSTEM_PROMPT


def test_the_server_answers_as_the_evaluator_did(server, evaluator_answers):
    client = OpenAI(base_url=server, api_key="local")

    def ask(model: str, question: str) -> str:
        completion = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                                    max_tokens=MAX_TOKENS)
        assert completion.usage.completion_tokens > 0
        return completion.choices[0].message.content

    for model in ("base", "tuned", "acme-tickets"):  # the registered model's name is the tuned model
        assert ask(model, QUESTION) == evaluator_answers["base" if model == "base" else "tuned", QUESTION], model
    # Requests that arrive together are answered in one batch, with the same answers.
    asked = [(model, question) for model in ("base", "tuned") for question in QUESTIONS] * 2
    with ThreadPoolExecutor(len(asked)) as pool:
        answers = list(pool.map(lambda pair: ask(*pair), asked))
    assert answers == [evaluator_answers[pair] for pair in asked]


def test_the_server_refuses_bad_requests_and_says_why(server):
    client = OpenAI(base_url=server, api_key="local", max_retries=0)
    with pytest.raises(openai.BadRequestError, match=r"messages\.0\.role"):
        client.chat.completions.create(model="tuned", messages=[{"role": "robot", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="tuned", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=1_000_000)
    with pytest.raises(openai.BadRequestError, match="exceeds the model's context of 8192 tokens"):
        client.chat.completions.create(model="base", messages=[{"role": "user", "content": "ticket " * 8200}])
    with pytest.raises(openai.NotFoundError, match="serves base, tuned"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    for body, message in ((b"{not json", "not valid JSON"), (b"[]", "JSON object")):
        request = urllib.request.Request(f"{server}/chat/completions", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert refused.value.code == 400
        assert message in json.load(refused.value)["error"]["message"]
    # A body over the limit is refused on its Content-Length, before it is sent.
    connection = http.client.HTTPConnection(urllib.parse.urlsplit(server).netloc, timeout=60)
    connection.putrequest("POST", "/v1/chat/completions")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", "1100000")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and "larger than" in json.load(response)["error"]["message"]
    connection.close()


def test_chat_prompt_prints_both_answers(workdir, evaluator_answers):
    chat = tuneloop("chat", RUN, "--workdir", str(workdir), "--prompt", QUESTION, "--max-tokens", str(MAX_TOKENS))
    assert chat.returncode == 0, chat.stderr[-3000:]
    expected = []
    for label in ("base:  ", "tuned: "):  # an answer's further lines are indented under its first
        lines = evaluator_answers[label.strip(" :"), QUESTION].splitlines() or [""]
        expected += [(label + lines[0]).rstrip()] + [("       " + line).rstrip() for line in lines[1:]]
    assert chat.stdout.splitlines() == expected


def test_chat_conversation_answers_each_message_and_ends_at_eof(workdir):
    chat = tuneloop("chat", str(workdir / RUN / "0123456789ab"), "--max-tokens", "8",
                    stdin="Hello\n\n/reset\n/nonsense\nThanks\n")
    assert chat.returncode == 0, chat.stderr[-3000:]
    assert chat.stdout.count("base:  ") == 2 and chat.stdout.count("tuned: ") == 2
    assert "conversation forgotten" in chat.stderr and "unknown command /nonsense" in chat.stderr
    assert "Traceback" not in chat.stderr


def test_an_unknown_run_or_one_without_an_adapter_is_explained(workdir):
    unknown = tuneloop("chat", "nope", "--workdir", str(workdir), "--prompt", "hi")
    assert unknown.returncode == 1
    assert "no run 'nope'" in unknown.stderr and f"{RUN}/0123456789ab" in unknown.stderr
    assert "pending/fedcba987654" in unknown.stderr
    training = tuneloop("serve", "--local", "pending", "--workdir", str(workdir), "--port", "0")
    assert training.returncode == 1
    assert "pending/fedcba987654 is Training and has no adapter yet (step 3/10)" in training.stderr
    empty = tuneloop("chat", "--workdir", str(workdir.parent / "elsewhere"), "--prompt", "hi")
    assert empty.returncode == 1 and "no local runs in" in empty.stderr
    assert "Traceback" not in unknown.stderr + training.stderr + empty.stderr
