"""The metric keys of a Tuneloop run. The MLflow UI groups charts by the part before the first '/' and
sorts the groups by name: `loss` (train and validation curves, side by side) comes first, then
`score` (the evaluation's headline numbers, one value each; their intervals are in the run's
description), `score_general`, `score_judge` (how far the judge can be trusted) and `score_regression`
(the guardrail sets), `significance` (each gate test's Holm-adjusted p-value), then `train` (the
optimiser's curves). `cost` holds what the job took, one value each, as its status had them when it registered
(CostStatus: the registration's own minutes are not in them). `preference` holds the preference stage of objective dpo, kto and sft-then-dpo: its own
curves, on the run's step axis (after sft-then-dpo's SFT steps; its first point is the measurement before it).
The validation loss before and after training is the validation curve's first and last point."""

TRAIN_LOSS = "loss/train"
VALIDATION_LOSS = "loss/validation"  # the validation split, at the same steps as the training loss
LEARNING_RATE = "train/learning_rate"
GRAD_NORM = "train/grad_norm"
TOKENS_PER_SECOND = "train/tokens_per_second"
EPOCH = "train/epoch"
# One value each, at the last step: the timed steps of all stages and processes (tuneloop_trainer.efficiency).
EFFICIENCY_TOKENS_PER_SECOND = "efficiency/tokens_per_second"
EFFICIENCY_ACHIEVED_TFLOPS = "efficiency/achieved_tflops"
EFFICIENCY_MFU = "efficiency/mfu"  # none on a CPU or an unknown GPU

# The preference stage (DPO or KTO); its validation rows are the held-out preference rows.
PREFERENCE_TRAIN_LOSS = "preference/train_loss"
PREFERENCE_VALIDATION_LOSS = "preference/validation_loss"
# dpo, held-out pairs, before and after the stage: mean of log p(chosen) - log p(rejected) under the model being
# trained (answer tokens summed), and the share of pairs where it is positive.
PREFERENCE_MARGIN = "preference/margin"
PREFERENCE_ACCURACY = "preference/accuracy"
PREFERENCE_LEARNING_RATE = "preference/learning_rate"
PREFERENCE_GRAD_NORM = "preference/grad_norm"
PREFERENCE_TOKENS_PER_SECOND = "preference/tokens_per_second"
PREFERENCE_EPOCH = "preference/epoch"
# TRL's per-step training metrics of the stage (its log key -> metric). The reward margin is
# beta * ((log p - log p_ref)(chosen) - (log p - log p_ref)(rejected)); kl is KTO's reference KL estimate.
PREFERENCE_TRL_METRICS = {
    "rewards/margins": "preference/reward_margin",
    "rewards/accuracies": "preference/reward_accuracy",
    "logps/chosen": "preference/logp_chosen",
    "logps/rejected": "preference/logp_rejected",
    "kl": "preference/kl",
}


def evaluation_metric(metric: str, side: str, evaluated_set: str = "test") -> str:
    """e.g. score/exactMatch (the candidate on the test split), score/exactMatch_baseline,
    score_regression/exactMatch, score_general/rougeL."""
    group = "score" if evaluated_set == "test" else f"score_{evaluated_set}"
    return f"{group}/{metric}{'' if side == 'candidate' else '_' + side}"


def gate_test_metric(metric: str, evaluated_set: str, kind: str) -> str:
    """e.g. significance/exactMatch_improvement_p_holm, significance/rougeL_general_nonInferiority_p_holm."""
    where = "" if evaluated_set == "test" else f"_{evaluated_set}"
    return f"significance/{metric}{where}_{kind}_p_holm"


JUDGE_METRICS = {field: f"score_judge/{field}"  # JudgeStats field -> metric
                 for field in ("self_agreement", "position_flips", "malformed", "refusals", "rambles", "unparseable")}

# CostStatus field (or "gpu_hours_per_point": its improvement's) -> metric.
COST_METRICS = {field: f"cost/{field}" for field in (
    "gpu_hours_requested", "gpu_hours_used", "queued_seconds", "running_seconds", "mfu", "tokens_per_second",
    "gpu_hours_per_point", "cost")}
