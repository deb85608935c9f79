"""Memory by category inside the user's own training loop (measured mode: their device, their step).

    with ngl_profile.profile(model, optimizer, gpu="4090", out="run/") as prof:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step(); optimizer.zero_grad()
            prof.step()

The first `track_steps` steps run under the MemoryTracker (a dispatch mode: every op pays a Python
call, so only those); its phases follow the loop by themselves: "backward" while autograd's engine
runs, "optimizer" inside optimizer.step() (its step hooks), "forward" from the start of a step
(batch creation included, as the CLI's steps do) and from each model call until backward, "other"
in between (gradient clipping, the scheduler). `prof.phase(name)` overrides that for a block.
The steps after the tracked ones are timed (wall time between prof.step() calls: data loading
included, one host sync per step on CUDA), `warmup` of them untimed. On exit the results.json has
one case, as `ngl-profile run` writes it: on CUDA with the allocator's reserved − tracked bytes as
allocator slack and NVML's used − reserved at the start as context (engine/case.py); elsewhere the
CLI's simulated allocator and assumed context for the target GPU.

Limits: the loss's gradient seed (one element) is made by loss.backward() before autograd's engine
starts, so it counts as forward's, not backward's. Tensors created before the block that are neither the model's nor the optimizer's are not
seen (on CUDA they land in allocator slack). A per-layer optimizer built before the profile hooks
its gradient hooks first, so gradients it frees at once count as temporaries.
"""
from __future__ import annotations

import resource
import statistics
import time
from contextlib import contextmanager

import torch

from ngl_profile.measure.memory import MemoryTracker
from ngl_profile.schema.results import CaseResult
from ngl_profile.schema.scenario import check_name
from ngl_profile.zoo.gpus import get_gpu

__all__ = ["Profile", "PHASES"]

PHASES = ("forward", "backward", "optimizer", "other")


class _LoopTracker(MemoryTracker):
    """A MemoryTracker whose phase follows the loop (see the module's note). `outside` is the phase
    outside backward, set by the hooks; `pinned` > 0 inside prof.phase()."""

    def __init__(self):
        super().__init__()
        self.outside = "forward"
        self.pinned = 0
        self.ops = 0
        """ops seen since the step began: a step with none (prof.step() twice) is not a step"""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        if not self.pinned:
            # -1 outside autograd's engine; the engine's own threads (CUDA) carry the task id too
            if torch._C._current_graph_task_id() != -1:
                self._phase = "backward"
            else:
                if self._phase == "backward":
                    self.outside = "other"  # backward has ended: clipping and the like until the step
                self._phase = self.outside
        return super().__torch_dispatch__(func, types, args, kwargs)


class Profile:
    """Measure `model` and `optimizer` in the loop inside this `with` block (see the module's note).

    gpu          target GPU for fits/headroom (`ngl-profile list gpus`)
    out          results.json there (a directory, or a .json path) on exit; None: nothing written
    track_steps  memory-tracked steps, counted by prof.step() (None: every step in the block)
    warmup       untimed steps after the tracked ones; the rest are timed
    state_categories  memory category of optimizer state keys ngl-profile does not know
                 ({key: category}, or one category for all); an unknown key is a ValueError
    tokens_per_step   tokens a step trains on, for tokens/s (default: input_ids the model saw)
    name, label  the run's and the case's names in reports

    After the block: `.case` (the CaseResult) and `.run` (the RunResult written to `out`). An
    exception in the block is recorded (an OOM as status "oom" with the breakdown at that moment),
    the file written, and the exception raised on.
    """

    def __init__(self, model: torch.nn.Module, optimizer, *, gpu: str = "rtx-4090", out=None,
                 track_steps: int | None = 2, warmup: int = 1, state_categories: dict | str | None = None,
                 tokens_per_step: int | None = None, name: str = "profile", label: str | None = None):
        from ngl_profile.user_optimizer import innermost, state_lookup

        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if not hasattr(innermost(optimizer), "register_step_pre_hook"):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}")
        for key, v, lo in (("track_steps", track_steps, 1), ("warmup", warmup, 0),
                           ("tokens_per_step", tokens_per_step, 1)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < lo):
                raise ValueError(f"{key} must be an integer ≥ {lo}" + (" or None" if key != "warmup" else "")
                                 + f"; got {v!r}")
        self.model, self.optimizer = model, optimizer
        self._inner = innermost(optimizer)  # accelerate's wrapper holds the one whose hooks fire
        self.gpu = get_gpu(gpu)
        self.name = check_name(name)
        self.label = label
        self.out = out
        self.track_steps, self.warmup, self.tokens_per_step = track_steps, warmup, tokens_per_step
        self._lookup = state_lookup(optimizer, state_categories)  # bad categories fail here, not mid-loop
        self.case: CaseResult | None = None
        self.run = None
        self._tracker: _LoopTracker | None = None
        self._tracking = False

    # --- the block ------------------------------------------------------------------------------
    def __enter__(self) -> "Profile":
        from ngl_profile.engine.case import _param_counts
        from ngl_profile.user_optimizer import code_path_note, optimizer_hparams, optimizer_name

        params = list(self.model.parameters())
        self.device = params[0].device if params else torch.device("cpu")
        self.cuda = self.device.type == "cuda"
        opt_name = optimizer_name(self.optimizer)
        self.case = CaseResult(optimizer={"name": opt_name, "label": self.label or opt_name,
                                          "hparams": optimizer_hparams(self.optimizer)},
                               status="ok", provenance="measured", params=_param_counts(self.model),
                               code_path=code_path_note(self.optimizer, False))
        self._t_start = time.perf_counter()
        self._shape = None
        self._step_tokens, self._tokens, self._times = 0, [], []
        self._timed_seen, self._t_last = 0, None
        self._tracked = 0
        self._context = self._start_cuda() if self.cuda else None
        t = _LoopTracker()
        t.declare_state(self._lookup)
        t.tag_optimizer(self._inner)  # state it already holds (a resumed run); an unknown key fails here
        t.attach(self.model)
        self._tracker = t
        self._hooks = [self.model.register_forward_pre_hook(self._on_forward, with_kwargs=True),
                       self._inner.register_step_pre_hook(self._on_step_begin),
                       self._inner.register_step_post_hook(self._on_step_end)]
        t.start_step()
        t.__enter__()
        self._tracking = True
        return self

    def step(self) -> None:
        """Call once at the end of every training step."""
        if self._tracker is None:
            raise RuntimeError("prof.step() outside the profile's with-block")
        if self._tracking:
            t = self._tracker
            if t.ops == 0:
                return  # nothing ran since the last call
            t.tag_optimizer(self._inner)
            t.end_step()
            self._tracked += 1
            if self.track_steps is not None and self._tracked >= self.track_steps:
                self._stop_tracking()
                self._t_last = self._clock()
            else:
                t.start_step()
                t.ops = 0
                t.outside = "forward"
        else:
            now = self._clock()
            self._timed_seen += 1
            if self._timed_seen > self.warmup:
                self._times.append(now - self._t_last)
                self._tokens.append(self._step_tokens)
            self._t_last = now
        self._step_tokens = 0

    @contextmanager
    def phase(self, name: str):
        """Count what the block allocates as `name` (forward: activations; the rest: temporaries)."""
        if name not in PHASES:
            raise ValueError(f"phase must be one of {', '.join(PHASES)}; got {name!r}")
        if self._tracker is None or not self._tracking:
            yield
            return
        self._tracker.pinned += 1
        try:
            with self._tracker.phase(name):
                yield
        finally:
            self._tracker.pinned -= 1

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._tracker is None:
            return False
        failure = exc if isinstance(exc, Exception) else None
        try:
            if self._tracking:
                if failure is not None:
                    self._fail_while_tracking(failure)
                elif self._tracker.ops or not self._tracked:
                    self._tracker.tag_optimizer(self._inner)
                    self._tracker.end_step()
                    self._stop_tracking()
                else:
                    self._stop_tracking()
            elif failure is not None:
                self._mark_failed(failure)
        finally:
            self._cleanup()
        if isinstance(exc, BaseException) and failure is None:
            return False  # Ctrl-C, SystemExit: nothing written
        self._finish()
        return False

    # --- hooks ----------------------------------------------------------------------------------
    def _on_forward(self, module, args, kwargs):
        from ngl_profile.records import token_ids

        ids = token_ids(kwargs) if kwargs.get("input_ids") is not None else token_ids(args)
        if ids is not None:
            self._step_tokens += ids.numel()
            if self._shape is None:
                self._shape = {"batch_size": max(1, int(ids.shape[0])) if ids.dim() else 1,
                               "seq_len": max(1, int(ids.shape[1])) if ids.dim() >= 2 else 1}
        if self._tracking and not self._tracker.pinned:
            self._tracker.outside = "forward"

    def _on_step_begin(self, optimizer, args, kwargs):
        if self._tracking:
            self._tracker.outside = "optimizer"

    def _on_step_end(self, optimizer, args, kwargs):
        if self._tracking:
            self._tracker.outside = "other"
            self._tracker.tag_optimizer(self._inner)

    # --- memory ---------------------------------------------------------------------------------
    def _start_cuda(self) -> int | None:
        """The CUDA context as engine/case.py measures it (NVML used − reserved), peaks reset. The
        user's allocator is not capped: this is their real run, not a test of the target."""
        from ngl_profile.measure.nvml import NvmlSampler

        torch.cuda.synchronize(self.device)
        used = NvmlSampler(self.device.index or 0).used_bytes_now()
        self.case.cuda["device_total_bytes"] = torch.cuda.get_device_properties(self.device).total_memory
        torch.cuda.reset_peak_memory_stats(self.device)
        return max(0, used - torch.cuda.memory_reserved(self.device)) if used is not None else None

    def _stop_tracking(self) -> None:
        from ngl_profile.engine.case import _record_memory

        self._tracker.__exit__(None, None, None)
        self._tracking = False
        if self.cuda:
            torch.cuda.synchronize(self.device)
        _record_memory(self.case, self._tracker.snapshot(), self.gpu, self.cuda, self._context, self.device)

    def _fail_while_tracking(self, exc: Exception) -> None:
        from ngl_profile.engine.case import _record_failure

        self._tracker.__exit__(None, None, None)
        self._tracking = False
        _record_failure(self.case, self._status(exc), exc, self._tracker, self.gpu, self.cuda, self._context,
                        self.device)

    def _mark_failed(self, exc: Exception) -> None:
        """A failure after the tracked steps: their breakdown stands, the status says what happened."""
        self.case.status = self._status(exc)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        self.case.message = f"{exc.__class__.__name__}: {first} (after the {self._tracked} tracked steps)"
        if self.case.status == "oom":
            self.case.fits = False

    @staticmethod
    def _status(exc: Exception) -> str:
        oom = isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()
        return "oom" if oom else "error"

    def _cleanup(self) -> None:
        if self._tracking:  # only on an interrupt: the dispatch mode must never outlive the block
            self._tracker.__exit__(None, None, None)
            self._tracking = False
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._tracker.detach()

    def _clock(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)  # a host sync: the step's kernels must have finished
        return time.perf_counter()

    # --- the record -----------------------------------------------------------------------------
    def _finish(self) -> None:
        from ngl_profile.measure.timing import rate_stats, timing_stats, tokens_per_second
        from ngl_profile.records import first_lr, model_facts, run_record, write_run

        c = self.case
        if self._times:
            c.step_time_s.update(total=statistics.median(self._times), total_min=min(self._times),
                                 total_max=max(self._times), steps=len(self._times))
            c.step_time_stats["total"] = timing_stats(self._times)
            tokens = self.tokens_per_step or int(statistics.median(self._tokens))
            if tokens:
                c.tokens_per_s = tokens_per_second(tokens, self._times)
                c.tokens_per_s_stats = rate_stats(tokens, self._times)
        c.host_rss_peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        c.skipped_updates = int(getattr(self._inner, "skipped_updates", 0))
        c.damping_backoffs = int(getattr(self._inner, "damping_backoffs", 0))
        c.duration_s = time.perf_counter() - self._t_start
        batch = {"batch_size": 1, "seq_len": 1, **(self._shape or {})}
        self.run = run_record(c, name=self.name, model=model_facts(self.model), batch=batch, gpu=self.gpu,
                              mode="measured", device=self.device.type, steps=len(self._times),
                              warmup=self.warmup, lr=first_lr(self._inner),
                              source="ngl_profile.profile (your training loop)")
        if self.out is not None:
            write_run(self.run, self.out)
