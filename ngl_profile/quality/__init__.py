"""Quality mode (`ngl-profile train`): does an optimizer's memory buy held-out loss?

Modules, in the order a run goes through them: config ([quality] table), data (the byte corpus),
train (one run: one optimizer, one seed), official (the official code's printed formula as an
optimizer), run (every case: lr sweep, seeds, memory estimate, the RunResult), verdict (which case
gave the lowest loss for its memory), charts and report (from the finished record), command (the CLI).
Nothing heavy is imported here: `ngl-profile --help` stays instant.
"""

__all__ = ["config", "data", "train", "official", "run", "verdict", "charts", "report", "command"]
