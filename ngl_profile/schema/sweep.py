"""`run --sweep AXIS=V1,V2,...`: one scenario per value of one axis, each validated before any runs.

The scenario's shape (seq_len, batch_size) is set on the scenario; a hyperparameter on every case
whose optimizer takes it, and only there: history_size where the optimizer has a window, rank on
the low-rank (GaLore-style) optimizers, as `--rank` does — LoRA's adapter rank is another knob and
stays as the file sets it. Cases the axis does not apply to run unchanged at every value (a flat
line in the chart, for reference). Every error is one line naming the spec and what is allowed.
"""
from __future__ import annotations

from dataclasses import dataclass

from ngl_profile.schema.scenario import OptimizerCase, Scenario

__all__ = ["SWEEP_AXES", "Sweep", "label_tag", "parse_sweep", "sweep_value", "takes"]

SWEEP_AXES = ("seq_len", "batch_size", "rank", "history_size", "world_size")
_SCENARIO_AXES = ("seq_len", "batch_size", "world_size")


@dataclass(frozen=True, slots=True)
class Sweep:
    axis: str
    values: tuple[int, ...]
    """in the order given (the order they run in)"""
    scenarios: tuple[Scenario, ...]
    """one per value, already validated"""

    def sub_dir(self, value: int) -> str:
        return f"{self.axis}-{value}"


def takes(axis: str, optimizer: str) -> bool:
    """Whether cases of `optimizer` change along `axis` (False for a name not in the zoo: a results
    file from elsewhere)."""
    from ngl_profile.zoo.optimizers import OPTIMIZERS

    if axis in _SCENARIO_AXES:
        return True
    spec = OPTIMIZERS.get(optimizer)
    if spec is None or axis not in spec.hparams:
        return False
    return spec.low_rank if axis == "rank" else True


def _int(text: str, axis: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise ValueError(f"--sweep {axis}: {text!r} is not an integer") from None


def parse_sweep(specs: list[str], scn: Scenario) -> Sweep:
    """`specs` as argparse collects repeated --sweep options; exactly one axis is allowed."""
    if len(specs) != 1:
        raise ValueError(f"--sweep: one axis at a time; got {len(specs)} (--sweep {' --sweep '.join(specs)})")
    spec = specs[0]
    axis, eq, rest = spec.partition("=")
    axis = axis.strip()
    if not eq:
        raise ValueError(f"--sweep {spec!r}: expected AXIS=V1,V2,... with AXIS one of {', '.join(SWEEP_AXES)}")
    if axis not in SWEEP_AXES:
        raise ValueError(f"--sweep: unknown axis {axis!r}; allowed: {', '.join(SWEEP_AXES)}")
    items = [x.strip() for x in rest.split(",")]
    if not rest.strip() or any(not x for x in items):
        raise ValueError(f"--sweep {axis}: expected comma-separated integers after '=', e.g. {axis}=256,512,1024; "
                         f"got {rest!r}")
    values = [_int(x, axis) for x in items]
    dup = sorted({v for v in values if values.count(v) > 1})
    if dup:
        raise ValueError(f"--sweep {axis}: {dup[0]} given twice")
    if not any(takes(axis, c.name) for c in scn.optimizers):
        why = " (the projection rank of GaLore-style optimizers; LoRA's adapter rank is not swept)" \
            if axis == "rank" else ""
        raise ValueError(f"--sweep {axis}: it applies to none of {scn.name}'s optimizers "
                         f"({', '.join(c.label for c in scn.optimizers)}){why}")
    scenarios = []
    for v in values:
        try:
            scenarios.append(_at(scn, axis, v))
        except ValueError as e:
            raise ValueError(f"--sweep {axis}={v}: {e}") from None
    return Sweep(axis=axis, values=tuple(values), scenarios=tuple(scenarios))


def _at(scn: Scenario, axis: str, value: int) -> Scenario:
    if axis in _SCENARIO_AXES:
        return scn.with_overrides(**{axis: value})
    cases = [OptimizerCase(name=c.name, label=_label(c, axis, value), hparams={**c.hparams, axis: value})
             if takes(axis, c.name) else c for c in scn.optimizers]
    return scn.with_overrides(optimizers=cases)


def _label(c: OptimizerCase, axis: str, value: int) -> str:
    """A label of the file's own ("natural-galore (s=2, int8)") may name the value the sweep
    replaces, so the value run is added to it; a bare name stays as it is."""
    if c.label == c.name:
        return c.label
    tag = label_tag(axis, value)
    return c.label[:120 - len(tag)] + tag


def label_tag(axis: str, value: int) -> str:
    return f" [{axis}={value}]"


def sweep_value(scenario: dict, axis: str) -> int | None:
    """The axis value a run's scenario (as results.json holds it) was run at; None when it has none
    (a hyperparameter no case sets) or several (not a sweep's run)."""
    if axis in _SCENARIO_AXES:
        return scenario.get(axis)
    found = {c.get("hparams", {}).get(axis) for c in scenario.get("optimizers", [])
             if takes(axis, c.get("name", ""))} - {None}
    return found.pop() if len(found) == 1 else None
