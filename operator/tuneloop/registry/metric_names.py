"""The metric keys of a Tuneloop run. The MLflow UI groups charts by the part before the first '/' and
sorts the groups by name: `loss` (train and validation curves, side by side) comes first, then
`score` (the evaluation's headline numbers, one value each; their intervals are in the run's
description), then `train` (the optimiser's curves). The hold-out loss before and after training is
the validation curve's first and last point."""

TRAIN_LOSS = "loss/train"
VALIDATION_LOSS = "loss/validation"  # the hold-out split, at the same steps as the training loss
LEARNING_RATE = "train/learning_rate"
GRAD_NORM = "train/grad_norm"
TOKENS_PER_SECOND = "train/tokens_per_second"
EPOCH = "train/epoch"


def evaluation_metric(metric: str, side: str, general: bool = False) -> str:
    """e.g. score/exactMatch (the candidate), score/exactMatch_baseline, score_general/rougeL."""
    return f"{'score_general' if general else 'score'}/{metric}{'' if side == 'candidate' else '_' + side}"
