"""The privacy plan of a method at a total budget: its DP releases (`budget_parts`), each with its share of epsilon,
and the noise of each so that together, in one accountant, they spend exactly epsilon (`calibrate`, kept in the store
as a `plan` artifact: every grid point reuses it)."""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict
from pathlib import Path

from distildp.core.manifests import write_json_atomic
from distildp.core.methods import check_method
from distildp.dp import calibration, epsilon_cache
from distildp.lm.training import TrainConfig, poisson_schedule
from distildp.pipeline.context import StageContext
from distildp.pipeline.settings import Settings


def sharing_epsilons(ctx: StageContext) -> contextlib.AbstractContextManager:
    """Accountants' epsilons kept in the store's `.accounting/` (distildp.dp.epsilon_cache): the grid's processes
    compute each once."""
    return epsilon_cache.directory(ctx.store.root / ".accounting")


def dp_schedule(ctx: StageContext, cfg: TrainConfig) -> tuple[float, int]:
    """(sampling rate q, steps) of a DP-SGD run over the private training split."""
    return poisson_schedule(len(ctx.corpus.texts("train")), cfg)


def private_train_config(settings: Settings, role: str, kd: bool = False) -> TrainConfig:
    """The private fine-tuning recipe of a role: the teacher's, the DP-SGD student's or DPKD's student's (DP-OPD's
    student trains by `settings.opd_train`)."""
    s = settings
    return s.teacher_train if role == "teacher" else s.dpkd_train if kd else s.student_train


def budget_parts(ctx: StageContext, method: str) -> list[calibration.BudgetPart]:
    """The DP releases of `method`, each with its share of the budget."""
    s = ctx.settings
    teacher = dp_schedule(ctx, s.teacher_train)
    if method in ("distildp", "synthetic_only"):
        if s.histogram == "dp":
            return [
                calibration.BudgetPart("teacher", 1 - s.histogram_share, *teacher),
                calibration.BudgetPart.gaussian("histogram", s.histogram_share),
            ]
        return [calibration.BudgetPart("teacher", 1.0, *teacher)]
    if method == "dpkd":
        return [
            calibration.BudgetPart("teacher", s.dpkd_teacher_share, *teacher),
            calibration.BudgetPart("student", 1 - s.dpkd_teacher_share, *dp_schedule(ctx, s.dpkd_train)),
        ]
    if method == "dpsgd":
        return [calibration.BudgetPart("student", 1.0, *dp_schedule(ctx, s.student_train))]
    if method == "dpopd":
        student = dp_schedule(ctx, s.opd_train)
        if s.opd_teacher == "dp":  # composed like DPKD's: a DP teacher, then the student's DP-SGD
            return [
                calibration.BudgetPart("teacher", s.opd_teacher_share, *teacher),
                calibration.BudgetPart("student", 1 - s.opd_teacher_share, *student),
            ]
        # a public teacher used no private data; a non-private one did, outside any accounting (its rows say so)
        return [calibration.BudgetPart("student", 1.0, *student)]
    check_method(method, references=False)
    raise NotImplementedError(f"method {method!r} has no budget parts")


def calibrate(ctx: StageContext, method: str, epsilon: float) -> calibration.ComposedCalibration:
    """Noise for every DP release of `method` so that together they spend exactly `epsilon` (a checked number).

    Calibration takes seconds, so the result is an artifact too."""
    s = ctx.settings
    parts = budget_parts(ctx, method)
    if math.isinf(epsilon):
        return calibration.calibrate_composed(epsilon, ctx.delta, parts, s.accountant, scheme=s.budget_scheme)
    config = {
        "epsilon": epsilon,
        "delta": ctx.delta,
        "accountant": s.accountant,
        "scheme": s.budget_scheme,
        "parts": [asdict(p) for p in parts],
    }

    def build(out: Path) -> dict:
        cal = calibration.calibrate_composed(epsilon, ctx.delta, parts, s.accountant, scheme=s.budget_scheme)
        fields = {
            k: getattr(cal, k)
            for k in ("target_epsilon", "delta", "accountant", "scheme", "epsilon", "part_epsilons", "part_deltas")
        }
        write_json_atomic(out / "plan.json", {**fields, "noise_multipliers": cal.noise_multipliers()})
        return {"metrics": {"epsilon": cal.epsilon}}

    saved = json.loads((ctx.store.build("plan", config, build).path / "plan.json").read_text())
    noise = saved.pop("noise_multipliers")
    return calibration.ComposedCalibration(mechanisms={p.name: p.mechanism(noise[p.name]) for p in parts}, **saved)


def noise(plan: calibration.ComposedCalibration) -> dict[str, float]:
    """The noise multiplier of each DP release of a plan; empty at epsilon = inf, where every stage trains without
    noise and the histogram is released exactly."""
    return {} if math.isinf(plan.target_epsilon) else plan.noise_multipliers()


def release_noise(plan: calibration.ComposedCalibration | None, release: str) -> float | None:
    """The noise multiplier of one DP release ('teacher', 'student', 'histogram') in `plan`; None where that
    release runs without noise: no plan (a reference model), epsilon = inf, or a release the plan does not hold."""
    return None if plan is None else noise(plan).get(release)
