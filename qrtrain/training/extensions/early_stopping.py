"""Stop training when an evaluation metric stops improving.

    qrtrain train extensions=[early_stopping] extensions.early_stopping.patience=2

After each evaluation: an improvement is a change beyond `threshold` in the better direction;
after `patience` evaluations without one, training stops (and is published as it stands).
"""

from transformers import TrainerCallback


class EarlyStopping(TrainerCallback):
    def __init__(self, metric: str = "eval_loss", patience: int = 3, threshold: float = 0.0, greater_is_better: bool = False):
        self.metric, self.patience, self.threshold, self.greater_is_better = metric, patience, threshold, greater_is_better
        self.best = None
        self.bad_evaluations = 0
        self.stopped_at = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics or self.metric not in metrics:
            return
        value = metrics[self.metric]
        better = self.best is None or (value > self.best + self.threshold if self.greater_is_better
                                       else value < self.best - self.threshold)
        if better:
            self.best, self.bad_evaluations = value, 0
        else:
            self.bad_evaluations += 1
        if self.bad_evaluations >= self.patience:
            control.should_training_stop = True
            self.stopped_at = state.global_step

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_evaluations": self.bad_evaluations}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_evaluations = state["best"], state["bad_evaluations"]
