#!/usr/bin/env bash
# The GPU check: one command for ONE NVIDIA H100/H200 machine, finished in under 8 minutes.
#
#   bash tools/fetch_gpu_wheels.sh          # here, first: fills .gpu-wheels/ (about 55 MiB)
#   bash benchmarks/gpu_check.sh            # on the GPU machine, with .gpu-wheels carried along
#   bash benchmarks/gpu_check.sh --dry-run  # anywhere: everything except training
#
# a. The environment: nvidia-smi, versions, the carried wheels installed where a package is
#    missing, what imports. Then, in the background: the random-init bench models are written once,
#    and the tests of step c run on CUDA.
# b. benchmarks/throughput.py for llama-3.2-1b and llama-3.1-8b, qlora and lora, with every variant
#    that imports. It starts only after a's background work is done: no other job uses the GPU
#    while it times steps.
# c. The results of the SIGTERM-resume test and of the GPU-marked tests (run during a).
# At the end, one summary: the tables, the tests, and what failed. The exit status is 1 when
# something failed or did not start.
#
# Each step has a timeout. No step starts past the deadline (GPU_CHECK_BUDGET_S, 465 s from the start).
# Results go to $OUT when it is set (the device tool returns that folder), else /tmp/gpu-check/results.
# Environment: PYTHON (python, else python3), GPU_CHECK_BUDGET_S, GPU_CHECK_STEPS_1B (8),
# GPU_CHECK_STEPS_8B (6), GPU_CHECK_RUNS (default: the four "shape:method" pairs), GPU_CHECK_TESTS
# (1; 0 skips the tests).
# --dry-run: prints the plan, checks the wheels (budget, one wheel per pin for CPython 3.12 and
# 3.11), installs the missing ones into a temporary folder, probes imports, runs
# throughput.py --dry-run per shape/method. No models are written and no tests run.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
case "${1:-}" in
    "") ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac

PYTHON=${PYTHON:-$(command -v python || command -v python3 || echo python)}
BUDGET=${GPU_CHECK_BUDGET_S:-465}
STEPS_1B=${GPU_CHECK_STEPS_1B:-8}
STEPS_8B=${GPU_CHECK_STEPS_8B:-6}
RUNS=${GPU_CHECK_RUNS:-"llama-3.2-1b:qlora llama-3.2-1b:lora llama-3.1-8b:qlora llama-3.1-8b:lora"}
TESTS=${GPU_CHECK_TESTS:-1}
WHEELS=.gpu-wheels
LIST=benchmarks/gpu-wheels.txt
WHEEL_BUDGET_MIB=60
WORK=${GPU_CHECK_WORK:-/tmp/gpu-check}
RESULTS=${OUT:-$WORK/results}
SITE=$WORK/site              # pip --target for the carried wheels, first on PYTHONPATH
CATALOG=$WORK/tuneloop-cache # TUNELOOP_CACHE of the benchmark runs: SmolLM2's tokenizer, no weights

# Caps in seconds. The estimates are from reading the code, not from a run. Bench model write:
# ~10 s for 1B and ~30-60 s for 8B (16 GB of bf16 safetensors). Throughput child: ~15-20 s (1B)
# or ~30 s (8B), mostly imports and model loading, plus ~10 s per throughput.py parent.
# Tests: ~60-90 s for the SIGTERM test, ~30 s for the GPU-marked ones.
CAP_INFO=30 CAP_INSTALL=60 CAP_PROBE=90 CAP_MODELS=150 CAP_SIGTERM=150 CAP_GPU_TESTS=90
CAP_RUN_1B=100 MIN_RUN_1B=40 # a run that cannot get MIN seconds is not started; the table
CAP_RUN_8B=150 MIN_RUN_8B=70 # comes only at the end of a run, so a run cut short yields nothing
RESERVE=10                   # seconds kept for the summary

rm -rf "$SITE" "$CATALOG" "$WORK/state"
mkdir -p "$RESULTS" "$SITE" "$CATALOG" "$WORK/state"
rm -f "$RESULTS"/*.txt "$RESULTS"/*.rc
exec > >(tee "$RESULTS/gpu_check.log") 2>&1

export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 # no network there
export PYTHONPATH="$SITE:$PWD/operator:$PWD/trainer-image${PYTHONPATH:+:$PYTHONPATH}"

FAILED=()
fail() { FAILED+=("$1"); echo "!! FAILED: $1"; }
left() { echo $((BUDGET - SECONDS - RESERVE)); }
section() { printf '\n=== %s  [%ss]\n' "$1" "$SECONDS"; }

# run_step NAME CAP MIN LOG COMMAND...: COMMAND under `timeout`, its output shown and saved in LOG.
# Its limit is CAP, or the time to the deadline if less; with under MIN seconds left it does not start.
run_step() {
    local name=$1 cap=$2 min=$3 log=$4 limit rc started=$SECONDS
    shift 4
    limit=$(left)
    ((limit > cap)) && limit=$cap
    if ((limit < min)); then
        echo "not started: ${limit}s left before the deadline, needs ${min}s" | tee "$log"
        fail "$name: not started (out of time)"
        return 0
    fi
    echo "--- $name (limit ${limit}s)"
    set +e
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    echo "$rc $((SECONDS - started))" >"$log.rc"
    verdict "$name" "$rc" $((SECONDS - started)) "$limit"
}

# verdict NAME RC SECONDS LIMIT: say how a step ended; a failure is recorded.
verdict() {
    if (($2 == 0)); then
        echo "--- $1: ok in ${3}s"
    elif (($2 == 124 || $2 == 137)); then
        fail "$1: cut at its ${4}s limit"
    else
        fail "$1: exit $2 after ${3}s"
    fi
}

# bg_step NAME CAP LOG COMMAND...: the same without output on the terminal, for background jobs;
# report_bg prints the log and records the outcome later.
bg_step() {
    local cap=$2 log=$3 rc=0 started=$SECONDS # $1, the name, is for the reader
    shift 3
    timeout -k 10 "$cap" "$@" >"$log" 2>&1 || rc=$?
    echo "$rc $((SECONDS - started)) $cap" >"$log.rc"
}
report_bg() {
    local name=$1 log=$2 rc seconds cap
    if [[ ! -f $log.rc ]]; then
        fail "$name: did not run"
        return 0
    fi
    read -r rc seconds cap <"$log.rc"
    cat "$log"
    verdict "$name" "$rc" "$seconds" "$cap"
}

steps_of() { [[ $1 == llama-3.1-8b ]] && echo "$STEPS_8B" || echo "$STEPS_1B"; }
shapes() { for run in $RUNS; do echo "${run%%:*}"; done | awk '!seen[$0]++'; }

# ---------------------------------------------------------------------------------------------------
section "gpu_check $( ((DRY_RUN)) && echo '--dry-run ')($(date -u '+%Y-%m-%d %H:%M UTC'), deadline ${BUDGET}s)"
echo "plan:"
echo "  a. environment, wheels from $WHEELS (installed where missing, into $SITE), import probes;"
if ((DRY_RUN)); then
    echo "     dry run: no bench models are written and no tests run"
else
    echo "     background: bench models for [$(shapes | paste -sd' ')] (limit ${CAP_MODELS}s);"
    if [[ $TESTS == 1 ]]; then
        echo "     beside them the tests: SIGTERM (limit ${CAP_SIGTERM}s), then GPU-marked (limit ${CAP_GPU_TESTS}s)"
    else
        echo "     no tests (GPU_CHECK_TESTS=$TESTS)"
    fi
fi
for run in $RUNS; do
    shape=${run%%:*}
    [[ $shape == llama-3.1-8b ]] && cap=$CAP_RUN_8B || cap=$CAP_RUN_1B
    echo "  b. throughput.py --shape $shape --method ${run#*:} --steps $(steps_of "$shape") (limit ${cap}s)"
done
echo "  c. the tests' results; then the summary. Results: $RESULTS"

section "a. environment"
echo "--- nvidia-smi"
if command -v nvidia-smi >/dev/null; then
    timeout "$CAP_INFO" nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv ||
        fail "nvidia-smi"
else
    echo "no nvidia-smi on this machine"
    ((DRY_RUN)) || fail "nvidia-smi: not found"
fi
echo "--- versions ($PYTHON)"
timeout "$CAP_INFO" "$PYTHON" - <<'EOF' || fail "versions"
import platform
from importlib.metadata import PackageNotFoundError, version

import torch

print(f"python {platform.python_version()}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
      f"CUDA available: {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
names = ["transformers", "peft", "accelerate", "triton", "tokenizers", "safetensors", "huggingface-hub",
         "numpy", "scipy", "pandas", "pyarrow", "xxhash", "fsspec", "typing-extensions", "packaging", "pytest"]
found = []
for name in names:
    try:
        found.append(f"{name} {version(name)}")
    except PackageNotFoundError:
        found.append(f"{name} MISSING")
print("; ".join(found))
EOF

echo "--- carried wheels ($WHEELS)"
if [[ ! -d $WHEELS ]]; then
    fail "$WHEELS is missing: run tools/fetch_gpu_wheels.sh here and carry $WHEELS"
else
    wheel_count=$(find "$WHEELS/" -maxdepth 1 -name '*.whl' | wc -l)
    wheel_bytes=$(find "$WHEELS/" -maxdepth 1 -name '*.whl' -printf '%s\n' | awk '{s += $1} END {print s + 0}')
    all_bytes=$(find "$WHEELS/" -maxdepth 1 -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
    awk -v n="$wheel_count" -v w="$wheel_bytes" -v a="$all_bytes" -v b="$WHEEL_BUDGET_MIB" 'BEGIN {
        printf "%d wheels, %.2f MiB (budget %d MiB); the whole folder %.2f MiB\n", n, w / 2^20, b, a / 2^20 }'
    ((wheel_bytes <= WHEEL_BUDGET_MIB * 1048576)) || fail "the wheels are over ${WHEEL_BUDGET_MIB} MiB"
fi
requirements=$(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$LIST" | grep -v '^$')
if ((DRY_RUN)) && [[ -d $WHEELS ]]; then
    for version in 3.12 3.11; do # one wheel for every pin, for the GPU machine's Python (3.12) and 3.11
        # shellcheck disable=SC2086  # one requirement per word
        if "$PYTHON" -m pip install --isolated --dry-run --quiet --no-index --no-deps --find-links "$WHEELS" \
            --only-binary=:all: --implementation cp --python-version "$version" --ignore-installed \
            --target "$WORK/state/resolve" $requirements >"$WORK/state/resolve.log" 2>&1; then
            echo "every pin in $LIST has a wheel for CPython $version"
        else
            cat "$WORK/state/resolve.log"
            fail "a pin in $LIST has no wheel for CPython $version"
        fi
    done
fi

echo "--- install what is missing (pip --target $SITE)"
# Prints which pins to install: the package is missing, or its version is outside the line's [SPEC].
missing=$("$PYTHON" - "$LIST" <<'EOF' || true
import re
import sys
from importlib.metadata import PackageNotFoundError, version

from packaging.specifiers import SpecifierSet

install = []
for line in open(sys.argv[1], encoding="utf-8"):
    requirement, _, comment = line.partition("#")
    requirement = requirement.strip()
    if not requirement:
        continue
    name, pin = requirement.split("==")
    spec = re.match(r"\s*\[([^\]]*)\]", comment)
    accept = SpecifierSet(spec.group(1) if spec else "")
    try:
        have = version(name)
    except PackageNotFoundError:
        have = None
    if have is not None and accept.contains(have, prereleases=True):
        print(f"  present   {name} {have}", file=sys.stderr)
    else:
        why = "missing" if have is None else f"has {have}, needs {accept}"
        print(f"  install   {name} {pin} ({why})", file=sys.stderr)
        install.append(requirement)
print(" ".join(install))
EOF
)
if [[ -z $missing ]]; then
    echo "nothing to install"
elif [[ -d $WHEELS ]]; then
    # shellcheck disable=SC2086
    run_step install "$CAP_INSTALL" 5 "$RESULTS/install.txt" "$PYTHON" -m pip install --isolated --quiet \
        --no-index --no-deps --no-compile --disable-pip-version-check --find-links "$WHEELS" \
        --target "$SITE" $missing
    if [[ $(cut -d' ' -f1 "$RESULTS/install.txt.rc" 2>/dev/null) == 0 ]]; then
        echo "installed into $SITE: $missing"
    fi
fi
if [[ -f $WHEELS/smollm2-135m-instruct-tokenizer.tar.gz ]]; then
    tar -xzf "$WHEELS/smollm2-135m-instruct-tokenizer.tar.gz" -C "$CATALOG"
    echo "SmolLM2 tokenizer (no weights) for the benchmark: TUNELOOP_CACHE=$CATALOG"
else
    fail "$WHEELS/smollm2-135m-instruct-tokenizer.tar.gz is missing (tools/fetch_gpu_wheels.sh)"
fi

if ((!DRY_RUN)); then
    echo "--- background: bench models, then the tests (output in step c)"
    # throughput.py's own model_path() writes each random-init model once, under ~/.cache/tuneloop.
    # shellcheck disable=SC2046
    bg_step "bench models" "$CAP_MODELS" "$RESULTS/bench-models.txt" \
        env TUNELOOP_CACHE="$CATALOG" "$PYTHON" -c '
import sys, time
sys.path.insert(0, "benchmarks")
import throughput
for name in sys.argv[1:]:
    started = time.perf_counter()
    path = throughput.model_path(throughput.SHAPES[name])
    print(f"{name}: {path} ({time.perf_counter() - started:.0f}s)", flush=True)
' $(shapes) &
    MODELS_PID=$!
    if [[ $TESTS == 1 ]]; then
        gpu_files=$(grep -l "pytest.mark.gpu" tests/test_*.py | paste -sd' ' || true)
        (
            bg_step "SIGTERM-resume test" "$CAP_SIGTERM" "$RESULTS/test-sigterm.txt" \
                "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_resilience.py -k sigterm
            if [[ -n $gpu_files ]]; then
                # shellcheck disable=SC2086
                bg_step "GPU-marked tests" "$CAP_GPU_TESTS" "$RESULTS/test-gpu.txt" \
                    "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu $gpu_files
            fi
        ) &
        TESTS_PID=$!
    fi
fi

echo "--- import probes"
probe_log=$RESULTS/probes.txt
timeout "$CAP_PROBE" "$PYTHON" - "$WORK/state" <<'EOF' 2>&1 | tee "$probe_log" || fail "import probes (see the FAILED lines above)"
import ast
import importlib.util
import sys
import time
from importlib.metadata import version

import torch


failures = 0


def probe(label, code):
    global failures
    started = time.perf_counter()
    try:
        exec(code, {})
    except Exception as error:  # report and go on: a failed import drops its variant
        first = (str(error).strip().splitlines() or [""])[0][:300]
        print(f"  FAILED  {label}: {type(error).__name__}: {first}")
        failures += 1
        return False
    print(f"  ok      {label} ({time.perf_counter() - started:.1f}s)")
    return True


def installed(module):
    if importlib.util.find_spec(module) is None:
        print(f"  absent  {module}")
        return False
    return True


# Every `from tuneloop... import` in throughput.py, as it stands (the trainer is being rewritten).
tree = ast.parse(open("benchmarks/throughput.py", encoding="utf-8").read())
imports = sorted({f"from {node.module} import {alias.name}" for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tuneloop")
                  for alias in node.names})
trainer = True
for line in imports:  # one at a time, to name each one that fails
    try:
        exec(line, {})
    except Exception as error:
        trainer = False
        failures += 1
        print(f"  FAILED  {line}: {type(error).__name__}: {error}")
print(f"  {'ok' if trainer else 'FAILED':<7} throughput.py's {len(imports)} imports from tuneloop and tuneloop_trainer "
      "(pydantic, datasketch, phonenumbers, stdnum)")
sft = installed("trl") and probe(f"trl {version('trl')}: SFTTrainer, SFTConfig (datasets, pyarrow, dill, multiprocess)",
                                 "from trl import SFTConfig, SFTTrainer")
if installed("bitsandbytes"):
    smoke = ("import torch, bitsandbytes as bnb\n"
             "w = torch.randn(256, 256, device='cuda', dtype=torch.bfloat16)\n"
             "q, state = bnb.functional.quantize_4bit(w, quant_type='nf4')\n"
             "assert (bnb.functional.dequantize_4bit(q, state) - w).abs().mean() < 0.1\n"
             "p = torch.nn.Parameter(torch.randn(4096, device='cuda'))\n"
             "p.grad = torch.randn_like(p)\n"
             "bnb.optim.PagedAdamW8bit([p]).step()\n") if torch.cuda.is_available() else ""
    bnb = probe(f"bitsandbytes {version('bitsandbytes')}" + (": NF4 round trip, a paged 8-bit AdamW step"
                                                              if smoke else " (import only: no CUDA)"),
                "import bitsandbytes\n" + smoke)
else:
    bnb = False
if not torch.cuda.is_available() and importlib.util.find_spec("triton") is None:
    print("  skip    liger_kernel: no triton here (it comes with CUDA builds of torch)")
    liger = True  # throughput.py skips the variant without CUDA
else:
    liger = installed("liger_kernel") and probe(f"liger_kernel {version('liger-kernel')}",
                                                "import liger_kernel.transformers")
unsloth = False
if importlib.util.find_spec("unsloth") is None:
    print("  absent  unsloth: not carried (over the wheel budget; benchmarks/gpu-wheels.txt): variant skipped")
elif not torch.cuda.is_available():
    print("  skip    unsloth: importing it needs a GPU")
else:
    unsloth = probe(f"unsloth {version('unsloth')}", "import unsloth")


def usable(module, ok):  # an absent module is fine here: throughput.py lists its variant as skipped
    return ok or importlib.util.find_spec(module) is None


# A variant whose child cannot start would end the whole throughput.py run, so it is left out.
checks = {"plain": sft, "tuneloop": trainer, "liger": sft and usable("liger_kernel", liger),
          "unsloth": sft and usable("unsloth", unsloth)}
variants = [name for name, ok in checks.items() if ok]
for name in (name for name, ok in checks.items() if not ok):
    print(f"  left out of the benchmark: {name} (a probe above failed)")
open(f"{sys.argv[1]}/variants", "w").write(",".join(variants))
open(f"{sys.argv[1]}/qlora", "w").write("ok" if bnb else "no")
print(f"--variants {','.join(variants) or '(none)'} (throughput.py lists an absent module's variant as skipped); "
      f"qlora runs: {'yes' if bnb else 'no (bitsandbytes failed)'}")
sys.exit(1 if failures else 0)
EOF
variants=$(cat "$WORK/state/variants" 2>/dev/null || true)
qlora=$(cat "$WORK/state/qlora" 2>/dev/null || echo no)

# ---------------------------------------------------------------------------------------------------
section "b. throughput"
if ((!DRY_RUN)); then
    echo "waiting for the background jobs (bench models, tests) so that the GPU is free"
    wait "$MODELS_PID" || true
    report_bg "bench models" "$RESULTS/bench-models.txt"
    [[ -n ${TESTS_PID:-} ]] && { wait "$TESTS_PID" || true; }
    echo "background done at ${SECONDS}s"
fi
for run in $RUNS; do
    shape=${run%%:*} method=${run#*:}
    steps=$(steps_of "$shape")
    if [[ $shape == llama-3.1-8b ]]; then cap=$CAP_RUN_8B min=$MIN_RUN_8B; else cap=$CAP_RUN_1B min=$MIN_RUN_1B; fi
    log=$RESULTS/throughput-$shape-$method.txt
    if [[ -z $variants ]]; then
        echo "no variant imports: nothing to run" >"$log"
        fail "throughput $shape $method: no variant imports"
        continue
    fi
    if [[ $method == qlora && $qlora != ok ]] && ((!DRY_RUN)); then
        echo "not run: bitsandbytes failed its probe in step a" >"$log"
        fail "throughput $shape $method: not run (bitsandbytes failed its probe)"
        continue
    fi
    args=(--shape "$shape" --method "$method" --steps "$steps" --variants "$variants")
    ((DRY_RUN)) && { args+=(--dry-run) cap=120 min=5; }
    run_step "throughput $shape $method" "$cap" "$min" "$log" \
        env TUNELOOP_CACHE="$CATALOG" "$PYTHON" benchmarks/throughput.py "${args[@]}"
done

# ---------------------------------------------------------------------------------------------------
section "c. tests"
if ((DRY_RUN)); then
    echo "not run in a dry run:"
    echo "  $PYTHON -m pytest -q tests/test_resilience.py -k sigterm"
    echo "  $PYTHON -m pytest -q -m gpu $(grep -l "pytest.mark.gpu" tests/test_*.py | paste -sd' ')"
elif [[ $TESTS != 1 ]]; then
    echo "skipped (GPU_CHECK_TESTS=$TESTS)"
else
    echo "--- SIGTERM-resume test (CUDA): pytest -q tests/test_resilience.py -k sigterm"
    report_bg "SIGTERM-resume test" "$RESULTS/test-sigterm.txt"
    if [[ -n $gpu_files ]]; then
        echo "--- GPU-marked tests: pytest -q -m gpu $gpu_files"
        report_bg "GPU-marked tests" "$RESULTS/test-gpu.txt"
    else
        fail "GPU-marked tests: no test file has the gpu mark"
    fi
fi

# ---------------------------------------------------------------------------------------------------
section "summary"
for run in $RUNS; do
    shape=${run%%:*} method=${run#*:}
    log=$RESULTS/throughput-$shape-$method.txt
    status=$(cut -d' ' -f1 "$log.rc" 2>/dev/null || echo "-")
    echo "--- $shape $method, $(steps_of "$shape") steps: $([[ $status == 0 ]] && echo ok || echo "FAILED ($status)") ($log)"
    if ((DRY_RUN)); then
        grep -E '^(dry run:| {11})' "$log" || true
    elif [[ $status == 0 ]]; then
        grep -E '^(device|shape|MFU peak):' "$log" || true
        awk '/^variant /{p=1} p && /^$/{exit} p' "$log"
    else
        tail -n 5 "$log" 2>/dev/null || true
    fi
done
if ((!DRY_RUN)) && [[ $TESTS == 1 ]]; then
    for log in "$RESULTS"/test-*.txt; do
        [[ -f $log ]] && echo "--- $(basename "$log" .txt): $(grep -E '(passed|failed|error|skipped|no tests ran)' "$log" | tail -n 1)"
    done
fi
echo
echo "time: ${SECONDS}s of ${BUDGET}s; results in $RESULTS"
if ((${#FAILED[@]})); then
    echo "${#FAILED[@]} failure(s):"
    printf '  %s\n' "${FAILED[@]}"
    exit 1
fi
echo "all steps passed"
