"""The FineTuneJob API models: defaults, camelCase on the wire, and error messages that name the field."""

from __future__ import annotations

import copy

import pytest

from tuneloop.api.common import SpecError, get_condition, set_condition
from tuneloop.api.finetunejob import FineTuneJob, FineTuneJobSpec, parse_manifest, parse_spec

MINIMAL_SPEC = {"baseModel": {"name": "smollm2-135m-instruct"}, "dataset": {"uri": "data/tickets.jsonl"}}

# Every field given, with values that differ from the defaults, so that a lost or renamed field shows.
FULL_MANIFEST = {
    "apiVersion": "tuneloop.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {
        "name": "support-bot",
        "namespace": "ml",
        "uid": "0b5c6a2e-1111-4c3b-9d5e-2a0f6c1d7e90",
        "generation": 3,
        "labels": {"team": "support"},
        "annotations": {"note": "first try"},
    },
    "spec": {
        "baseModel": {"uri": "pvc://models/llama-3.1-8b"},
        "dataset": {
            "uri": "pvc://datasets/support/train.jsonl",
            "format": "messages",
            "validationFraction": 0.05,
            "testFraction": 0.2,
            "seed": 7,
            "contamination": {"remove": False, "threshold": 0.7, "numPerm": 64},
            "systemPrompt": "You are Acme's ticket router.",
            "cleaning": {
                "normalize": False,
                "deduplicate": False,
                "nearDuplicates": {"enabled": False, "threshold": 0.8, "numPerm": 64},
                "minTokens": 4,
                "maxTokens": 900,
                "pii": {"redact": True, "kinds": ["email", "iban"]},
            },
            "replay": {"uri": "pvc://datasets/general.jsonl", "format": "alpaca", "fraction": 0.1},
            "preferences": {"uri": "pvc://datasets/support/pairs.jsonl", "format": "pairs"},
            "augment": {
                "teacher": {"url": "http://teacher.llm:8000/v1", "model": "qwen2.5-72b-instruct",
                            "apiKeySecret": {"name": "teacher-key", "key": "token"}, "temperature": 0.7,
                            "maxTokens": 400, "concurrency": 8, "timeoutSeconds": 30, "maxRetries": 2,
                            "local": False},
                "targetRows": 500, "maxShare": 0.4, "mode": "paraphrase",
                "instructions": "other customers and account numbers; keep the JSON keys",
                "examplesPerRequest": 2, "maxRequests": 1500, "seed": 7,
            },
        },
        "method": {
            "type": "qlora",
            "lora": {"r": 8, "alpha": 16.0, "dropout": 0.1, "targetModules": ["q_proj", "v_proj"], "useDora": True,
                     "useRslora": True},
            "quantization": {"quantType": "fp4", "doubleQuant": False, "computeDtype": "float16"},
            "objective": "sft-then-dpo",
            "preference": {"beta": 0.2, "learningRate": 1e-5, "epochs": 1, "desirableWeight": 1.0,
                           "undesirableWeight": 1.5},
        },
        "training": {
            "epochs": 2,
            "learningRate": 0.001,
            "lrScheduler": "linear",
            "warmupRatio": 0.05,
            "microBatchSize": 4,
            "gradientAccumulationSteps": 2,
            "maxSeqLength": 512,
            "weightDecay": 0.01,
            "adamBeta2": 0.95,
            "maxGradNorm": 0.5,
            "packing": False,
            "gradientCheckpointing": True,
            "precision": "bf16",
            "optimizer": "adamw",
            "lossSpikeFactor": 5.0,
            "checkpoints": {"everySteps": 25, "keepLast": 3},
            "earlyStopping": {"enabled": True, "evalEverySteps": 10, "patience": 2, "minDelta": 0.01},
            "seed": 1,
        },
        "resources": {
            "gpus": 2,
            "nodes": 2,
            "cpu": "8",
            "memory": "64Gi",
            "nodeSelector": {"gpu": "h100"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "training",
            "workloadPriorityClassName": "batch-low",
        },
        "output": {"uri": "pvc://adapters/support-bot", "previewExamples": 5, "mergeAdapter": True,
                   "export": ["gguf"], "gguf": {"type": "q4_0", "checkRows": 20, "minTokenAgreement": 0.6}},
        "evaluation": {
            "enabled": True, "baseline": "champion", "maxExamples": 200, "maxNewTokens": 128, "batchSize": 16,
            "structured": {"labelFields": ["pri"]},
            "judge": {"url": "http://judge.llm:8000/v1", "model": "qwen2.5-7b-instruct",
                      "apiKeySecret": {"name": "judge", "key": "token"}, "rubric": "Be strict.", "pairwise": True,
                      "concurrency": 8, "timeoutSeconds": 30.0, "maxRetries": 2, "required": True,
                      "maxTokens": 256, "maxExamples": 100, "agreementSample": 20, "minAgreement": 0.8,
                      "agreementTemperature": 0.5, "maxPositionFlips": 0.3, "local": False},
            "generalSet": {"uri": "pvc://datasets/general.jsonl", "maxExamples": 40},
            "regressionSet": {"enabled": False, "maxExamples": 100},
            "bootstrap": {"samples": 2000, "confidence": 0.9, "seed": 3},
            "gate": {"primaryMetric": "judgeScore", "minScore": {"judgeWinRate": 0.5},
                     "minImprovement": {"exactMatch": 0.02}, "nonInferiorityMargin": 0.1,
                     "effectOfInterest": 0.05},
        },
        "registry": {"enabled": True, "modelName": "support-bot", "promotion": "manual"},
        "queueName": "team-a-gpus",
        "suspend": False,
    },
    "status": {
        "phase": "Training",
        "message": "train workload support-bot-train launched",
        "conditions": [{"type": "SpecValid", "status": "True", "reason": "Valid", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 3}],
        "progress": {"step": 10, "totalSteps": 100, "epoch": 0.2, "loss": 1.5,
                     "tokensPerSecond": 1234.5, "etaSeconds": 60},
        "observedGeneration": 3,
        "startTime": "2026-01-01T00:00:00Z",
    },
}


def manifest_with(spec: dict) -> dict:
    return {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "bad-job"},
            "spec": spec}


def spec_with(**changes) -> dict:
    """MINIMAL_SPEC with nested changes: spec_with(method={"lora": {"r": 0}})."""
    spec = copy.deepcopy(MINIMAL_SPEC)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


# --- defaults ---------------------------------------------------------------------------------------


def test_a_minimal_spec_gets_the_documented_defaults():
    spec = parse_spec(MINIMAL_SPEC)

    assert spec.method.type == "lora"
    assert spec.method.lora.r == 16
    assert spec.method.lora.alpha == 32
    assert spec.method.lora.dropout == 0.05
    assert spec.method.lora.target_modules == ["all-linear"]
    assert spec.training.learning_rate == 2e-4
    assert spec.training.lr_scheduler == "cosine"
    assert spec.training.epochs == 3
    assert spec.dataset.format == "auto"
    assert spec.dataset.test_fraction == 0.1
    assert spec.resources.gpus == 0 and spec.resources.nodes == 1
    assert spec.output.uri is None


def test_defaults_show_on_the_wire_in_camel_case():
    wire = parse_spec(MINIMAL_SPEC).to_wire()

    assert wire["method"]["lora"] == {"r": 16, "alpha": 32.0, "dropout": 0.05, "targetModules": ["all-linear"],
                                      "useDora": False, "useRslora": False}
    assert wire["training"]["learningRate"] == 2e-4
    assert wire["training"]["lrScheduler"] == "cosine"
    assert wire["training"]["epochs"] == 3
    assert wire["dataset"]["testFraction"] == 0.1
    # Unset optional fields are left out rather than sent as null.
    assert "uri" not in wire["output"] and "systemPrompt" not in wire["dataset"]


# --- wire format ------------------------------------------------------------------------------------


def test_a_full_manifest_round_trips_unchanged():
    job = FineTuneJob.model_validate(copy.deepcopy(FULL_MANIFEST))

    assert job.to_wire() == FULL_MANIFEST


def test_parse_manifest_round_trips_the_same_as_model_validate():
    assert parse_manifest(copy.deepcopy(FULL_MANIFEST)).to_wire() == FULL_MANIFEST


def test_fields_are_snake_case_in_python():
    job = FineTuneJob.model_validate(copy.deepcopy(FULL_MANIFEST))

    assert job.api_version == "tuneloop.dev/v1alpha1"
    assert job.spec.base_model.uri == "pvc://models/llama-3.1-8b"
    assert job.spec.dataset.test_fraction == 0.2
    assert job.spec.dataset.system_prompt == "You are Acme's ticket router."
    assert job.spec.dataset.cleaning.near_duplicates.num_perm == 64
    assert job.spec.method.lora.target_modules == ["q_proj", "v_proj"]
    assert job.spec.method.quantization.quant_type == "fp4"
    assert job.spec.training.micro_batch_size == 4
    assert job.spec.training.gradient_accumulation_steps == 2
    assert job.spec.training.early_stopping.eval_every_steps == 10
    assert job.spec.resources.node_selector == {"gpu": "h100"}
    assert job.spec.output.merge_adapter is True
    assert job.status.progress.total_steps == 100
    assert job.status.conditions[0].last_transition_time == "2026-01-01T00:00:00Z"


def test_snake_case_names_are_accepted_from_python_too():
    spec = FineTuneJobSpec(base_model={"name": "smollm2-135m-instruct"},
                           dataset={"uri": "data.jsonl", "test_fraction": 0.25})

    assert spec.dataset.test_fraction == 0.25
    assert spec.to_wire()["dataset"]["testFraction"] == 0.25
    assert spec.to_wire()["baseModel"] == {"name": "smollm2-135m-instruct"}


# --- invalid manifests -------------------------------------------------------------------------------

INVALID = [
    pytest.param(spec_with(method={"lora": {"r": 0}}), "spec.method.lora.r: must be >= 1", id="lora-r-zero"),
    pytest.param(spec_with(method={"lora": {"r": 1024}}), "spec.method.lora.r: must be <= 512", id="lora-r-too-big"),
    pytest.param(spec_with(method={"lora": {"dropout": 1}}), "spec.method.lora.dropout: must be < 1",
                 id="lora-dropout-one"),
    pytest.param(spec_with(method={"lora": {"alpha": 0}}), "spec.method.lora.alpha: must be > 0", id="lora-alpha-zero"),
    pytest.param(spec_with(dataset={"testFraction": 0.5}), "spec.dataset.testFraction: must be < 0.5",
                 id="test-half"),
    pytest.param(spec_with(dataset={"testFraction": 0}), "spec.dataset.testFraction: must be > 0",
                 id="test-zero"),
    pytest.param(spec_with(training={"learningRat": 1e-3}), "spec.training.learningRat: is not a known field",
                 id="unknown-field-typo"),
    pytest.param(spec_with(training={"epochs": 0}), "spec.training.epochs: must be >= 1", id="epochs-zero"),
    pytest.param(spec_with(training={"lrScheduler": "step"}),
                 "spec.training.lrScheduler: must be one of 'cosine', 'linear', 'constant' or 'warmup-stable-decay'",
                 id="scheduler-enum"),
    pytest.param(spec_with(method={"type": "dora"}), "spec.method.type: must be one of 'lora', 'qlora' or 'full'",
                 id="method-type-enum"),
    pytest.param({"baseModel": {"name": "smollm2-135m-instruct"}}, "spec.dataset: is required", id="no-dataset"),
    pytest.param({"dataset": {"uri": "data.jsonl"}}, "spec.baseModel: is required", id="no-base-model"),
    pytest.param(spec_with(dataset={"format": "csv"}),
                 "spec.dataset.format: must be one of 'auto', 'alpaca', 'messages' or 'text'", id="format-enum"),
    pytest.param(spec_with(baseModel={"name": "smollm2-135m-instruct", "uri": "file:///models/x"}),
                 "spec.baseModel: give exactly one of name (a catalog entry) or uri (a model folder)",
                 id="base-model-name-and-uri"),
    pytest.param(spec_with(baseModel={"name": None}),
                 "spec.baseModel: give exactly one of name (a catalog entry) or uri (a model folder)",
                 id="base-model-neither"),
    # URI problems are found by the model-level check, so they are reported at the parent (spec.dataset).
    pytest.param(spec_with(dataset={"uri": "http://example.com/train.jsonl"}),
                 "spec.dataset.uri: unsupported URI scheme in 'http://example.com/train.jsonl': use pvc://, s3:// or file://",
                 id="http-scheme"),
    pytest.param(spec_with(dataset={"uri": "pvc:///train.jsonl"}), "spec.dataset.uri: 'pvc:///train.jsonl' names no claim or bucket",
                 id="pvc-without-claim"),
    pytest.param(spec_with(dataset={"uri": "   "}), "spec.dataset.uri: must not be empty", id="blank-uri"),
    pytest.param(spec_with(output={"uri": "s3://"}), "spec.output.uri: 's3://' names no claim or bucket",
                 id="s3-without-bucket"),
    pytest.param(spec_with(method={"lora": {"targetModules": []}}),
                 "spec.method.lora.targetModules: must have at least 1 item(s)",
                 id="empty-target-modules"),
    pytest.param(spec_with(method={"lora": {"targetModules": ["all-linear", "q_proj"]}}),
                 "spec.method.lora: targetModules: all-linear stands alone; list module names or give [all-linear]",
                 id="all-linear-not-alone"),
    pytest.param(spec_with(dataset={"cleaning": {"minTokens": 10, "maxTokens": 5}}),
                 "spec.dataset.cleaning: maxTokens must be >= minTokens", id="max-tokens-below-min"),
    pytest.param(spec_with(dataset={"cleaning": {"pii": {"kinds": ["email", "ssn"]}}}),
                 "spec.dataset.cleaning.pii.kinds[1]: must be one of 'email', 'phone', 'ip', 'card', 'iban' or 'national-id'",
                 id="pii-kind-in-list"),
    pytest.param(spec_with(training={"epochs": "many"}),
                 "spec.training.epochs: must be an integer, not 'many'",
                 id="wrong-type"),
]


@pytest.mark.parametrize(("spec", "problem"), INVALID)
def test_parse_spec_names_the_field_and_the_problem(spec, problem):
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)

    assert caught.value.problems == [problem]
    assert str(caught.value) == problem


@pytest.mark.parametrize(("spec", "problem"), INVALID)
def test_parse_manifest_reports_the_same_path_from_the_top(spec, problem):
    with pytest.raises(SpecError) as caught:
        parse_manifest(manifest_with(spec))

    assert caught.value.problems == [problem]


def test_every_problem_is_reported_not_only_the_first():
    spec = spec_with(method={"lora": {"r": 0}}, training={"epochs": 0, "learningRat": 1})

    with pytest.raises(SpecError) as caught:
        parse_spec(spec)

    assert sorted(caught.value.problems) == sorted([
        "spec.method.lora.r: must be >= 1",
        "spec.training.epochs: must be >= 1",
        "spec.training.learningRat: is not a known field",
    ])
    assert str(caught.value) == "; ".join(caught.value.problems)


@pytest.mark.parametrize(("manifest", "problem"), [
    pytest.param({**manifest_with(MINIMAL_SPEC), "kind": "TrainingJob"}, "kind: must be one of 'FineTuneJob'",
                 id="wrong-kind"),
    pytest.param({**manifest_with(MINIMAL_SPEC), "apiVersion": "v1"}, "apiVersion: must be one of 'tuneloop.dev/v1alpha1'",
                 id="wrong-api-version"),
    pytest.param({k: v for k, v in manifest_with(MINIMAL_SPEC).items() if k != "metadata"}, "metadata: is required",
                 id="no-metadata"),
    pytest.param({k: v for k, v in manifest_with(MINIMAL_SPEC).items() if k != "spec"}, "spec: is required",
                 id="no-spec"),
    pytest.param(["not", "a", "mapping"], "manifest: must be a mapping with apiVersion, kind, metadata and spec",
                 id="a-list"),
])
def test_parse_manifest_checks_the_envelope(manifest, problem):
    with pytest.raises(SpecError) as caught:
        parse_manifest(manifest)

    assert caught.value.problems == [problem]


def test_a_valid_minimal_manifest_parses():
    job = parse_manifest(manifest_with(MINIMAL_SPEC))

    assert job.metadata.name == "bad-job"
    assert job.metadata.namespace == "default"
    assert job.status.phase == "Pending"


# --- conditions -------------------------------------------------------------------------------------

T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z", "2026-01-01T00:10:00Z"


def test_set_condition_adds_a_condition_with_the_given_time():
    conditions = set_condition([], "Trained", "False", "Running", "step 1", observed_generation=2, now=T0)

    assert [c.to_wire() for c in conditions] == [{
        "type": "Trained", "status": "False", "reason": "Running", "message": "step 1",
        "lastTransitionTime": T0, "observedGeneration": 2,
    }]


def test_last_transition_time_stays_while_the_status_stays():
    conditions = set_condition([], "Trained", "False", "Running", "step 1", now=T0)
    conditions = set_condition(conditions, "Trained", "False", "StillRunning", "step 2", now=T1)

    trained = get_condition(conditions, "Trained")
    assert trained.last_transition_time == T0
    # Reason and message do follow the latest call.
    assert (trained.reason, trained.message) == ("StillRunning", "step 2")
    assert len(conditions) == 1


def test_last_transition_time_moves_when_the_status_changes():
    conditions = set_condition([], "Trained", "False", "Running", now=T0)
    conditions = set_condition(conditions, "Trained", "True", "Succeeded", now=T1)
    conditions = set_condition(conditions, "Trained", "True", "Succeeded", now=T2)

    assert get_condition(conditions, "Trained").last_transition_time == T1


def test_set_condition_leaves_other_conditions_alone():
    conditions = set_condition([], "SpecValid", "True", "Valid", now=T0)
    conditions = set_condition(conditions, "Trained", "True", "Succeeded", now=T1)
    conditions = set_condition(conditions, "Trained", "False", "Failed", now=T2)

    assert {c.type: (c.status, c.last_transition_time) for c in conditions} == {
        "SpecValid": ("True", T0), "Trained": ("False", T2)}
    assert get_condition(conditions, "Complete") is None


def test_set_condition_does_not_change_its_input():
    original = set_condition([], "Trained", "False", "Running", now=T0)
    set_condition(original, "Trained", "True", "Succeeded", now=T1)

    assert original[0].status == "False" and original[0].last_transition_time == T0


def test_manifests_use_camel_case_only():
    from tuneloop.api.common import SpecError
    from tuneloop.api.finetunejob import parse_spec as parse

    with pytest.raises(SpecError, match="spec.training.learning_rate: is not a known field"):
        parse({"baseModel": {"name": "m"}, "dataset": {"uri": "d.jsonl"}, "training": {"learning_rate": 1e-3}})
