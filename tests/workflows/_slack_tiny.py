"""A SLACK run small enough for the suite (``slack-digits`` overrides), and a hook that keeps the
workflow's messages; shared by the workflow tests that run it."""

TINY = [
    "data.size=10",
    "model.width=4",
    "optimizer.ops=[identity,rotate,invert,solarize]",
    "optimizer.pretrain_steps=4",
    "optimizer.rounds=1",
    "optimizer.retrain_steps=2",
    "optimizer.unrolled_steps=2",
    "optimizer.batch_size=8",
    "optimizer.b_aug=2",
    "baselines=[uniform]",
    "eval_seeds=1",
    "eval_epochs=0.1",
]


class Notes:
    """A hook recording ``fulcra_message`` calls."""

    def __init__(self):
        self.messages = []

    def fulcra_message(self, workflow, message):
        self.messages.append(message)
