"""ngl-profile inside a transformers `Trainer`: the same measurement as `ngl_profile.profile`, driven
by the Trainer's callbacks (train begin → enter, each optimizer step → prof.step(), train end →
exit and write results.json).

    trainer = Trainer(model, args, train_dataset=ds,
                      callbacks=[NGLProfileCallback(out="run/", gpu="4090")])
    trainer.train()

One step is one optimizer step (gradient accumulation included). The Trainer has no callback for
an exception: to record one (an OOM with its breakdown) and stop the tracker, catch it and call
`callback.close(e)` before raising it on.
"""
from __future__ import annotations

from transformers import TrainerCallback

__all__ = ["NGLProfileCallback"]


class NGLProfileCallback(TrainerCallback):
    """Options as for ngl_profile.loop.Profile (gpu, out, track_steps, warmup, state_categories,
    tokens_per_step, name, label). After training: `.case` (CaseResult) and `.run` (RunResult)."""

    def __init__(self, out=None, **options):
        options.setdefault("name", "hf-trainer")
        self._options = dict(options, out=out)
        self._profile = None
        self.case = self.run = None
        # bad options fail when the callback is made, not after the model has been set up
        from ngl_profile.schema.scenario import check_name
        from ngl_profile.zoo.gpus import get_gpu

        get_gpu(self._options.get("gpu", "rtx-4090"))
        check_name(self._options["name"])

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        from ngl_profile.loop import Profile

        if model is None or optimizer is None:
            raise ValueError("NGLProfileCallback needs the Trainer's model and optimizer at train begin")
        self._profile = Profile(model, optimizer, **self._options)
        self._profile.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if self._profile is not None:
            self._profile.step()

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self, exc: BaseException | None = None) -> None:
        """End the profile (recording `exc` as the run's failure, if given) and write results.json;
        nothing happens when it has ended already."""
        if self._profile is not None:
            prof, self._profile = self._profile, None
            prof.__exit__(type(exc) if exc is not None else None, exc, None)
            self.case, self.run = prof.case, prof.run
