"""A stage sized in minutes: the step count that fits a time budget on the machine that runs it.

A recipe sized in steps on one CPU runs longer on a slower one (the multilingual recipe: 18.7 minutes
on an Intel Xeon, 21.6 on an AMD EPYC with fewer steps); `minutes:` on a stage fixes the time and lets
the machine decide the steps. The stage runs under its configured `steps` (now the most it may run)
until it has used the first of its `checks` shares of the budget (and at least `min_steps` steps in
this process); it then measures its seconds per step and sets its step count:

    sized = steps_done + floor((budget - seconds spent) / seconds per step), in [steps_done, steps]

and sizes again at each later share (25%, 50% and 75% of the budget), each time at the pace since the
last sizing: a step can cost more later in a stage (the multilingual recipe's fell from 9.5 to 8.4 steps
a second after its first minute; sized once, at 5%, it would have run 2.5 minutes over). The
learning-rate schedule ends at the current count (before the first sizing it follows `steps`; a later
sizing moves its end by a few percent, so the lr steps a little).

E.g. a 60-second stage with `steps: 100000` whose first 10 steps take 3.1 seconds (5% = 3 s reached):
3.1 / 10 = 0.31 s a step, 56.9 seconds left, floor(56.9 / 0.31) = 183 more, so 193 steps. If the
next 30 steps take 0.4 s each, step 40 ends at 15.1 s, past 25% (15 s): 12 s / 30 = 0.4 s a step,
floor((60 - 15.1) / 0.4) = 112 more, so 152 steps.

After the last share the count is final. Every checkpoint records the seconds spent, the count and
the sizings done (`state()`), so a run resumed after the last one repeats the uninterrupted run's
schedule exactly; one resumed earlier sizes the remaining shares on its own clock, counting the
seconds its checkpoint recorded. Under DDP the processes decide on the mean of their clocks (one
all-reduce a step until the last sizing), so all stop at the same step. What happens after a stage's
last step (validation, saving the stage's folder) is not counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class StepBudget:
    """Size a stage of at most `max_steps` optimizer steps to `seconds` of training (module docstring).

    `spent_s` / `sized_steps` / `sizings` carry a resumed stage's state (`state()` of its checkpoint);
    `checks` are the shares of the budget at which it sizes (increasing, in (0, 1]); `clock` is
    injectable so tests can size deterministically."""

    seconds: float
    max_steps: int
    spent_s: float = 0.0
    sized_steps: int | None = None
    sizings: int = 0
    checks: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75)
    min_steps: int = 10
    clock: Callable[[], float] = field(default=time.perf_counter, repr=False)
    _t0: float | None = field(default=None, init=False, repr=False)
    # (steps ran, seconds elapsed) in this process at the last sizing: where the next pace starts
    _last: tuple[int, float] = field(default=(0, 0.0), init=False, repr=False)

    def __post_init__(self):
        if not (isinstance(self.seconds, (int, float)) and math.isfinite(self.seconds) and self.seconds > 0):
            raise ValueError(f"a stage's time budget must be finite seconds > 0, got {self.seconds!r}.")
        checks = tuple(self.checks)
        ordered = bool(checks) and all(a < b for a, b in zip((0.0, *checks), checks)) and checks[-1] <= 1
        if self.max_steps < 0 or self.spent_s < 0 or not ordered or self.min_steps < 1 or self.sizings < 0:
            raise ValueError(
                f"StepBudget(max_steps={self.max_steps}, spent_s={self.spent_s}, checks={self.checks}, "
                f"min_steps={self.min_steps}, sizings={self.sizings}): need max_steps >= 0, spent_s >= 0, "
                "checks increasing in (0, 1], min_steps >= 1 and sizings >= 0."
            )
        self.checks = checks

    @classmethod
    def for_stage(cls, stage, progress: dict | None = None, **kw) -> StepBudget | None:
        """The budget of a stage with `minutes` (None without), resumed from a checkpoint's progress
        of that stage if given (its `stage_seconds`, `stage_steps` and `stage_sizings`, when recorded;
        a checkpoint written before sizings were counted and holding a count has made one)."""
        if getattr(stage, "minutes", None) is None:
            return None
        progress = progress or {}
        sized = progress.get("stage_steps")
        return cls(
            seconds=60.0 * stage.minutes,
            max_steps=stage.steps,
            spent_s=float(progress.get("stage_seconds", 0.0)),
            sized_steps=sized,
            sizings=int(progress.get("stage_sizings", 0 if sized is None else 1)),
            **kw,
        )

    def start(self) -> None:
        """Start this process's clock (when the stage's first step is about to run)."""
        self._t0 = self.clock()
        self._last = (0, 0.0)

    def elapsed(self) -> float:
        """Seconds of this stage in this process so far."""
        if self._t0 is None:
            raise RuntimeError("StepBudget.elapsed() before start().")
        return self.clock() - self._t0

    @property
    def sized(self) -> bool:
        """Sized at least once: `sized_steps` is the stage's count."""
        return self.sized_steps is not None

    @property
    def final(self) -> bool:
        """Every check passed: the count no longer changes."""
        return self.sizings >= len(self.checks)

    def observe(self, steps_done: int, ran: int, elapsed: float) -> int | None:
        """After `steps_done` steps of the stage, `ran` of them in this process in `elapsed` seconds:
        the stage's step count (sized again here when the next check is due), None before the first.

        A check is due once the seconds spent pass its share of the budget (or the steps run reach
        `max_steps`) and this process has run `min_steps`; the pace is that since the last sizing in
        this process when `min_steps` ran since, else of the whole process. A process that passes
        several shares at once sizes once for them all.

        >>> b = StepBudget(seconds=60, max_steps=100_000)
        >>> b.observe(9, 9, 2.9) is None, b.observe(10, 10, 3.1), b.observe(39, 39, 14.7)
        (True, 193, 193)
        >>> b.observe(40, 40, 15.1), b.sizings
        (152, 2)
        """
        if self.final:
            return self.sized_steps
        spent = self.spent_s + elapsed
        due = spent >= self.checks[self.sizings] * self.seconds or steps_done >= self.max_steps
        if ran < self.min_steps or not due:
            return self.sized_steps
        r0, e0 = self._last
        per_step = (elapsed - e0) / (ran - r0) if ran - r0 >= self.min_steps else elapsed / ran
        more = math.floor(max(self.seconds - spent, 0.0) / per_step) if per_step > 0 else self.max_steps
        self.sized_steps = max(steps_done, min(self.max_steps, steps_done + more))
        self.sizings += 1
        while not self.final and spent >= self.checks[self.sizings] * self.seconds:
            self.sizings += 1  # shares passed at once
        self._last = (ran, elapsed)
        return self.sized_steps

    def state(self) -> dict:
        """What a checkpoint records of the stage's budget: seconds spent so far (this process plus
        any before a resume), the sized step count (None until sized) and the sizings done."""
        spent = self.spent_s + (self.elapsed() if self._t0 is not None else 0.0)
        return {
            "stage_seconds": round(spent, 3),
            "stage_steps": self.sized_steps,
            "stage_sizings": self.sizings,
        }
