"""A corpus of bad manifests: each is a bundled example with one field broken.

`Case.where` says who must refuse it:
- "schema": the CRD (OpenAPI schema or CEL) and `tuneloop validate` alike;
- "json": a value JSON cannot carry (.nan, .inf): kubectl cannot send it, `validate` names it;
- "validator": what no schema can express (a cron expression that never fires, a regular
  expression that does not compile, a time zone, the object's total size): `validate` and the
  operator refuse it, with the reason in `why`.
Used by tests/test_manifest_corpus.py (the validator and the emulator's schema) and by the
real-API-server tier (what 1.20's OpenAPI validation refuses).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = {kind: yaml.safe_load((REPO / "examples" / "cluster" / file).read_text())
            for kind, file in (("FineTuneJob", "finetunejob.yaml"), ("ModelDeployment", "modeldeployment.yaml"),
                               ("FineTuneSchedule", "finetuneschedule.yaml"))}
INF, NAN = float("inf"), float("nan")
ANALYSIS = "spec.strategy.blueGreen.prePromotionAnalysis"
KEYS = ("a map's keys have no maxLength in a schema, so a CEL rule over them has no bounded cost: "
        "the API server would refuse the CRD")


@dataclass(frozen=True)
class Case:
    kind: str
    path: str  # dotted; a number indexes a list
    value: Any
    where: str = "schema"
    why: str = ""
    names: str = ""  # what the validator's problem mentions; default: the field's own name

    @property
    def id(self) -> str:
        shown = repr(self.value)
        if len(shown) > 60:
            shown = f"{shown[:40]}...({len(shown)} characters, {hashlib.sha256(shown.encode()).hexdigest()[:6]})"
        return f"{self.kind}:{self.path}={shown}"

    @property
    def mentions(self) -> str:
        return self.names or self.path.split(".")[-1]

    def manifest(self) -> dict[str, Any]:
        manifest = copy.deepcopy(EXAMPLES[self.kind])
        manifest["metadata"]["namespace"] = "corpus"
        target, keys = manifest, self.path.split(".")
        for key in keys[:-1]:
            target = target[int(key)] if isinstance(target, list) else target.setdefault(key, {})
        if isinstance(target, list):
            target[int(keys[-1])] = copy.deepcopy(self.value)
        else:
            target[keys[-1]] = copy.deepcopy(self.value)
        return manifest


def ftj(path: str, value: Any, where: str = "schema", why: str = "") -> Case:
    return Case("FineTuneJob", path, value, where, why)


def md(path: str, value: Any, where: str = "schema", why: str = "", names: str = "") -> Case:
    return Case("ModelDeployment", path, value, where, why, names)


def fts(path: str, value: Any, where: str = "schema", why: str = "") -> Case:
    return Case("FineTuneSchedule", path, value, where, why)


CASES: list[Case] = [
    # names
    ftj("metadata.name", "Acme_Tickets!"), ftj("metadata.name", "a" * 300), ftj("metadata.name", "-acme"),
    ftj("metadata.name", "acme..tickets"), ftj("metadata.name", ""),
    md("metadata.name", "acme.tickets"), md("metadata.name", "1acme"), md("metadata.name", "a" * 64),
    fts("metadata.name", "Nightly!"), fts("metadata.name", "n" * 254),
    # types: what YAML makes of an unquoted word or number
    ftj("spec.training.epochs", True), ftj("spec.training.epochs", "3"), ftj("spec.training.epochs", 2.5),
    ftj("spec.training.learningRate", "1e-3"), ftj("spec.method.lora.r", "16"), ftj("spec.method.lora.useDora", "yes"),
    ftj("spec.training.packing", 1), ftj("spec.resources.gpus", "1"), ftj("spec.dataset.uri", 42),
    ftj("spec.dataset.cleaning", "on"), ftj("spec.method.lora.targetModules", "q_proj"),
    md("spec.serving.replicas", "2"), md("spec.adapter.alias", 7), fts("spec.suspend", "false"),
    # numbers: finite and in range
    ftj("spec.training.seed", 2 ** 70), ftj("spec.training.seed", -1), ftj("spec.dataset.seed", 2 ** 32),
    ftj("spec.evaluation.bootstrap.seed", 2 ** 40),
    ftj("spec.method.lora.alpha", INF, "json"), ftj("spec.training.learningRate", NAN, "json"),
    ftj("spec.training.maxGradNorm", -INF, "json"), ftj("spec.method.lora.dropout", NAN, "json"),
    md(f"{ANALYSIS}.maxP95LatencyMs", NAN, "json"), ftj("spec.evaluation.gate.minScore", {"exactMatch": INF}, "json"),
    ftj("spec.method.lora.alpha", -1), ftj("spec.method.lora.alpha", 1e9), ftj("spec.method.lora.r", 0),
    ftj("spec.method.lora.r", 513), ftj("spec.method.lora.dropout", 1.0), ftj("spec.training.epochs", 0),
    ftj("spec.training.epochs", 101), ftj("spec.training.learningRate", 0), ftj("spec.training.learningRate", 2),
    ftj("spec.training.warmupRatio", 1), ftj("spec.training.microBatchSize", 0), ftj("spec.training.maxSeqLength", 8),
    ftj("spec.training.adamBeta2", 1), ftj("spec.training.lossSpikeFactor", 1), ftj("spec.training.weightDecay", -0.1),
    ftj("spec.training.checkpoints.keepLast", 0), ftj("spec.training.checkpoints.everySteps", -1),
    ftj("spec.training.earlyStopping.patience", 0), ftj("spec.training.earlyStopping.minDelta", 1e12),
    ftj("spec.dataset.testFraction", 0.5), ftj("spec.dataset.validationFraction", 0),
    ftj("spec.dataset.contamination.threshold", 0), ftj("spec.evaluation.judge.agreementSample", -1),
    ftj("spec.evaluation.gate.nonInferiorityMargin", 2), ftj("spec.evaluation.gate.effectOfInterest", 0), ftj("spec.dataset.cleaning.minTokens", -1),
    ftj("spec.dataset.cleaning.maxTokens", 10 ** 12), ftj("spec.dataset.cleaning.nearDuplicates.threshold", 0),
    ftj("spec.dataset.cleaning.nearDuplicates.numPerm", 8), ftj("spec.resources.gpus", -1),
    ftj("spec.resources.gpus", 65), ftj("spec.resources.nodes", 0), ftj("spec.output.previewExamples", 51),
    ftj("spec.evaluation.maxExamples", 0), ftj("spec.evaluation.maxNewTokens", 10 ** 6),
    md("spec.serving.replicas", 0), md("spec.serving.gpus", 9), md("spec.serving.maxLoraRank", 17),
    md("spec.serving.maxModelLen", 8), md("spec.strategy.blueGreen.scaleDownDelaySeconds", -1),
    md("spec.strategy.blueGreen.readinessTimeoutSeconds", 0),
    md("spec.strategy.blueGreen.autoPromotionSeconds", 10 ** 10),
    md(f"{ANALYSIS}.requests", 0), md(f"{ANALYSIS}.maxErrorRate", 1.5),
    fts("spec.replayFraction", 0), fts("spec.replayFraction", 1), fts("spec.feedback.minNewCorrections", 0),
    fts("spec.successfulJobsHistoryLimit", 101), fts("spec.startingDeadlineSeconds", 0),
    fts("spec.jobTemplate.spec.training.epochs", True),
    # Kubernetes quantities and shapes
    ftj("spec.resources.memory", "-5Gi"), ftj("spec.resources.memory", "lots"), ftj("spec.resources.memory", "5 Gi"),
    ftj("spec.resources.memory", "32GB"), ftj("spec.resources.cpu", "lots"), ftj("spec.resources.cpu", "-1"),
    md("spec.serving.memory", "48 GB"), md("spec.serving.cpu", "2 cores"),
    ftj("spec.resources.tolerations", [{"key": "gpu", "operator": "Exists", "effect": "Explode"}]),
    ftj("spec.resources.tolerations", [{"key": "gpu", "operator": "Maybe"}]),
    ftj("spec.resources.tolerations", [{"key": "gpu", "operator": "Exists", "tolerationSeconds": "soon"}]),
    ftj("spec.resources.tolerations", [{"key": "gpu", "operator": "Exists", "colour": "red"}]),
    ftj("spec.resources.tolerations", [{"key": "bad key!", "operator": "Exists"}]),
    ftj("spec.resources.nodeSelector", {"gpu": "a100 80gb"}),
    ftj("spec.resources.nodeSelector", {"bad key!": "x"}, "validator", KEYS),
    ftj("spec.resources.nodeSelector", {"gpu": "v" * 64}), ftj("spec.resources.priorityClassName", "High Priority"),
    fts("spec.jobTemplate.metadata.labels", {"team": "support & sales"}),
    fts("spec.jobTemplate.metadata.labels", {"-team": "support"}, "validator", KEYS),
    fts("spec.jobTemplate.metadata.annotations", {"team/": "support"}, "validator", KEYS),
    # enums
    ftj("spec.method.type", "prefix"), ftj("spec.method.quantization.quantType", "int3"),
    ftj("spec.training.lrScheduler", "exponential"), ftj("spec.training.precision", "fp8"),
    ftj("spec.dataset.format", "csv"), ftj("spec.dataset.cleaning.pii.kinds", ["ssn"]),
    ftj("spec.evaluation.baseline", "yesterday"), fts("spec.concurrencyPolicy", "Allow"),
    # storage URIs: no traversal, no control characters, a claim or bucket, a known scheme
    ftj("spec.dataset.uri", "pvc://claim/../../etc/shadow"), ftj("spec.dataset.uri", "pvc://datasets/acme/../../x"),
    ftj("spec.dataset.uri", "s3:///no-bucket"), ftj("spec.dataset.uri", "ftp://host/tickets.jsonl"),
    ftj("spec.dataset.uri", ""), ftj("spec.dataset.uri", "pvc://datasets/a\nb.jsonl"),
    ftj("spec.dataset.uri", "pvc://datasets/" + "x" * 5000),
    ftj("spec.output.uri", "pvc://adapters/../../root"), ftj("spec.baseModel", {"uri": "pvc://models/.."}),
    ftj("spec.dataset.replay", {"uri": "pvc://d/../x.jsonl"}), md("spec.adapter", {"uri": "pvc://a/../b"}),
    fts("spec.feedback.snapshotUri", "pvc://datasets/../secrets"),
    # image references
    md("spec.serving.image", "vllm/vllm-openai:v0.10; rm -rf /"), md("spec.serving.image", "Vllm/Vllm:latest"),
    md("spec.serving.image", "vllm/vllm-openai@sha256:zz"), md("spec.serving.image", "vllm/vllm-openai:"),
    md("spec.serving.image", "$(curl evil)/vllm"),
    # strings: lengths and forms
    ftj("spec.dataset.systemPrompt", "x" * 2_000_000), ftj("spec.baseModel", {"name": ""}),
    ftj("spec.baseModel", {"name": "n" * 300}), ftj("spec.registry.modelName", "m" * 300),
    ftj("spec.method.lora.targetModules", ["q_proj; rm -rf /"]), ftj("spec.method.lora.targetModules", []),
    ftj("spec.evaluation.structured.labelFields", ["f" * 300]),
    ftj("spec.evaluation.judge", {"url": "ftp://judge/v1", "model": "j"}),
    ftj("spec.evaluation.judge", {"url": "http://judge/v1", "model": "j", "apiKeyEnv": "MY KEY"}),
    ftj("spec.evaluation.judge", {"url": "http://judge/v1", "model": "j",
                                  "apiKeySecret": {"name": "Judge_Key", "key": "token"}}),
    ftj("spec.evaluation.judge", {"url": "http://judge/v1", "model": "j",
                                  "apiKeySecret": {"name": "judge", "key": "a/b"}}),
    md("spec.adapter.version", "v3"), md("spec.adapter.name", "m" * 300),
    md("spec.strategy.blueGreen.activeService", "Tickets"),
    md(f"{ANALYSIS}.smokePrompts", [{"prompt": "", "expect": {"json": True}}]),
    md(f"{ANALYSIS}.smokePrompts", [{"prompt": "p" * 100_000, "expect": {"json": True}}]),
    md("spec.serving.extraArgs", ["--x"] * 300),
    fts("spec.feedback.url", "file:///etc/passwd"), fts("spec.feedback.tokenSecret", {"name": "Bad_Name", "key": "t"}),
    fts("spec.feedback.tokenEnv", "1TOKEN"), fts("spec.schedule", "every night"),
    # a query or fragment would swallow the path the client appends; credentials belong in Secrets
    fts("spec.feedback.url", "http://attacker.example/#"), fts("spec.feedback.url", "http://feedback:8080/?to="),
    fts("spec.feedback.url", "http://user:pass@feedback:8080"),
    ftj("spec.evaluation.judge", {"url": "http://judge/v1#", "model": "j"}),
    fts("spec.schedule", "61 * * * *", "validator", "the schema checks five fields; their ranges take a cron parser"),
    fts("spec.timeZone", "t" * 100),
    # rules across fields (CEL)
    ftj("spec.baseModel", {}), ftj("spec.baseModel", {"name": "x", "uri": "pvc://m/x"}),
    ftj("spec.dataset.cleaning", {"minTokens": 5, "maxTokens": 2}),
    ftj("spec.method.lora.targetModules", ["all-linear", "q_proj"]),
    md(f"{ANALYSIS}.judge", {"url": "http://127.0.0.1:8765/v1", "model": "smollm2-135m-instruct", "local": True}),
    md("spec.adapter", {"name": "acme-tickets"}), md(f"{ANALYSIS}.smokePrompts", [{"prompt": "p", "expect": {}}]),
    fts("spec.feedback.tokenEnv", "TOKEN"),
    # unknown fields
    ftj("spec.trainig", {"epochs": 2}), md("spec.serving.replica", 2), fts("spec.jobTemplate.spec.method.lora.rank", 8),
    # what only the validator can see
    fts("spec.schedule", "0 0 30 2 *", "validator", "a cron expression that never fires (30 February)"),
    fts("spec.schedule", "0 0 31 4,6,9,11 *", "validator", "a cron expression that never fires (31 April, ...)"),
    fts("spec.timeZone", "Mars/Olympus_Mons", "validator", "the IANA time zone database is not in a schema"),
    md(f"{ANALYSIS}.smokePrompts", [{"prompt": "p", "expect": {"regex": "(unclosed"}}], "validator",
       "a regular expression that does not compile"),
    md(f"{ANALYSIS}.smokePrompts", [{"prompt": "p", "expect": {"regex": "(P[0-9])\\1"}}], "validator",
       "a backreference: RE2, which matches in linear time, has none; no schema compiles a regular expression"),
    md(f"{ANALYSIS}.smokePrompts", [{"prompt": "p" * 60_000, "expect": {"json": True}}] * 30, "validator",
       "each prompt fits, but the object is over the 1.5 MiB Kubernetes stores", names="1.5 MiB"),
]
