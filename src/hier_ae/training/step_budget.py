"""A stage sized in minutes: the step count that fits a time budget on the machine that runs it.

A recipe sized in steps on one CPU runs longer on a slower one (the multilingual recipe: 18.7 minutes
on an Intel Xeon, 21.6 on an AMD EPYC with fewer steps); `minutes:` on a stage fixes the time and lets
the machine decide the steps. The stage runs under its configured `steps` (now the most it may run)
until it has used `calibrate_share` of its budget (and at least `min_steps` steps in this process);
it then measures its seconds per step so far and sets its step count once:

    sized = steps_done + floor((budget - seconds spent) / seconds per step), in [steps_done, steps]

From then on the learning-rate schedule ends at `sized` (before, it followed `steps`: at 5% of the
budget the cosine has barely moved either way). E.g. a 60-second stage with `steps: 100000` whose
first 10 steps take 3.1 seconds (`calibrate_share` 0.05 = 3 s reached): 3.1 / 10 = 0.31 s a step,
56.9 seconds left, floor(56.9 / 0.31) = 183 more, so the stage runs 193 steps.

The count is decided once and written to every later checkpoint (`state()`), so a run resumed after
the sizing keeps it and repeats the uninterrupted run's schedule; a run stopped before it sizes
again when it resumes, counting the seconds its checkpoint recorded. Under DDP the processes decide
on the mean of their clocks (one all-reduce a step until the sizing), so all stop at the same step.
What happens after a stage's last step (validation, saving the stage's folder) is not counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class StepBudget:
    """Size a stage of at most `max_steps` optimizer steps to `seconds` of training (module docstring).

    `spent_s` / `sized_steps` carry a resumed stage's state (`state()` of its checkpoint); `clock`
    is injectable so tests can size deterministically."""

    seconds: float
    max_steps: int
    spent_s: float = 0.0
    sized_steps: int | None = None
    calibrate_share: float = 0.05
    min_steps: int = 10
    clock: Callable[[], float] = field(default=time.perf_counter, repr=False)
    _t0: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if not (isinstance(self.seconds, (int, float)) and math.isfinite(self.seconds) and self.seconds > 0):
            raise ValueError(f"a stage's time budget must be finite seconds > 0, got {self.seconds!r}.")
        if self.max_steps < 0 or self.spent_s < 0 or not 0 < self.calibrate_share <= 1 or self.min_steps < 1:
            raise ValueError(
                f"StepBudget(max_steps={self.max_steps}, spent_s={self.spent_s}, calibrate_share="
                f"{self.calibrate_share}, min_steps={self.min_steps}): need max_steps >= 0, spent_s >= 0, "
                "0 < calibrate_share <= 1 and min_steps >= 1."
            )

    @classmethod
    def for_stage(cls, stage, progress: dict | None = None, **kw) -> StepBudget | None:
        """The budget of a stage with `minutes` (None without), resumed from a checkpoint's progress
        of that stage if given (its `stage_seconds` and `stage_steps`, when recorded)."""
        if getattr(stage, "minutes", None) is None:
            return None
        progress = progress or {}
        return cls(
            seconds=60.0 * stage.minutes,
            max_steps=stage.steps,
            spent_s=float(progress.get("stage_seconds", 0.0)),
            sized_steps=progress.get("stage_steps"),
            **kw,
        )

    def start(self) -> None:
        """Start this process's clock (when the stage's first step is about to run)."""
        self._t0 = self.clock()

    def elapsed(self) -> float:
        """Seconds of this stage in this process so far."""
        if self._t0 is None:
            raise RuntimeError("StepBudget.elapsed() before start().")
        return self.clock() - self._t0

    @property
    def sized(self) -> bool:
        return self.sized_steps is not None

    def observe(self, steps_done: int, ran: int, elapsed: float) -> int | None:
        """After `steps_done` steps of the stage, `ran` of them in this process in `elapsed` seconds:
        the stage's step count once it is sized (decided here at most once), else None.

        >>> b = StepBudget(seconds=60, max_steps=100_000)
        >>> b.observe(9, 9, 2.9) is None, b.observe(10, 10, 3.1)
        (True, 193)
        """
        if self.sized_steps is not None:
            return self.sized_steps
        spent = self.spent_s + elapsed
        early = spent < self.calibrate_share * self.seconds and steps_done < self.max_steps
        if ran < self.min_steps or early:
            return None
        per_step = elapsed / ran
        more = math.floor(max(self.seconds - spent, 0.0) / per_step) if per_step > 0 else self.max_steps
        self.sized_steps = max(steps_done, min(self.max_steps, steps_done + more))
        return self.sized_steps

    def state(self) -> dict:
        """What a checkpoint records of the stage's budget: seconds spent so far (this process plus
        any before a resume) and the sized step count (None until sized)."""
        spent = self.spent_s + (self.elapsed() if self._t0 is not None else 0.0)
        return {"stage_seconds": round(spent, 3), "stage_steps": self.sized_steps}
