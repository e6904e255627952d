"""A results row: what one method at one budget and seed gave (the student's and teacher's test perplexities, the
floor), and the privacy it spent (epsilon composed over its DP releases, the accountant, sigma, q, steps).
`results.COLUMNS` names the columns every row has; `Pipeline.run` builds rows from its artifacts.
"""

from __future__ import annotations

import math
import time
from typing import Any

from distildp.core.manifests import Artifact
from distildp.core.methods import epsilon_covers, reference_epsilon, reference_role
from distildp.dp import calibration, privacy
from distildp.pipeline.settings import Settings


def method_row(
    settings: Settings,
    delta: float,
    method: str,
    epsilon: float,
    seed: int,
    plan: calibration.ComposedCalibration,
    arts: dict[str, Artifact],
    started: float,
) -> dict[str, Any]:
    """The row of a method at total budget `epsilon`: its student's (and teacher's) perplexities from the
    artifacts `arts` (Pipeline.artifacts), and the privacy the plan's mechanisms spent together."""
    artifacts, student, teacher = list(arts.values()), arts["student"], arts.get("teacher")
    leaks = [a.privacy.get("leak") for a in artifacts if a.privacy.get("leak")]
    mechanisms = [m for m in plan.mechanisms.values() if m.noise_multiplier > 0]
    total = (
        privacy.privacy_record(mechanisms, delta, settings.accountant, target_epsilon=epsilon, leaks=leaks)
        if mechanisms
        else None
    )
    first_dp = next((a.privacy for a in artifacts if a.privacy.get("noise_multiplier")), {})
    synthetic = arts.get("synthetic")
    opd_teacher = settings.opd_teacher if method == "dpopd" else ""
    return {
        "dataset": settings.dataset,
        "method": method,
        "epsilon": epsilon,
        "epsilon_spent": total["epsilon"] if total else math.inf,
        "delta": delta,
        "seed": seed,
        "student_ppl": student.metrics["test_ppl"],
        "teacher_ppl": teacher.metrics["test_ppl"] if teacher else math.nan,
        "teacher_marginal_ppl": synthetic.metrics["teacher_marginal_ppl"] if synthetic else math.nan,
        "val_ppl": student.metrics["val_ppl"],
        "teacher_val_ppl": teacher.metrics["val_ppl"] if teacher else math.nan,
        "floor": student.metrics.get("floor", math.nan),
        "teacher_floor": teacher.metrics.get("floor", math.nan) if teacher else math.nan,
        "private": bool(total and total["private"]),
        "epsilon_covers": epsilon_covers(method, opd_teacher),
        "opd_teacher": opd_teacher,
        "dp_randomness": settings.dp_randomness if mechanisms else "",
        "accountant": settings.accountant,
        "noise_multiplier": first_dp.get("noise_multiplier", 0.0),
        "sample_rate": first_dp.get("sample_rate", math.nan),
        "steps": first_dp.get("steps", 0),
        "mechanisms": "; ".join(f"{name}: {m.describe()}" for name, m in plan.mechanisms.items()),
        "histogram": synthetic.privacy.get("release") if synthetic else "",
        "synthetic_size": synthetic.metrics["n_samples"] if synthetic else 0,
        "wall_time_s": round(sum(a.manifest["wall_time_s"] for a in artifacts), 1),
        "run_time_s": round(time.time() - started, 1),
    }


def reference_row(
    settings: Settings,
    delta: float,
    method: str,
    seed: int,
    art: Artifact,
    floors: dict[str, float],
    started: float,
) -> dict[str, Any]:
    """The row of a reference model `art` (pretrained_<role> or nonprivate_<role>), beside the floor of each role."""
    role, epsilon = reference_role(method), reference_epsilon(method)
    return {
        "dataset": settings.dataset,
        "method": method,
        "epsilon": epsilon,
        "epsilon_spent": epsilon,
        "delta": 0.0 if epsilon == 0 else delta,
        "seed": seed,
        "student_ppl": art.metrics["test_ppl"] if role == "student" else math.nan,
        "teacher_ppl": art.metrics["test_ppl"] if role == "teacher" else math.nan,
        "teacher_marginal_ppl": art.metrics.get("test_ppl_marginal", math.nan),
        "val_ppl": art.metrics["val_ppl"] if role == "student" else math.nan,
        "teacher_val_ppl": art.metrics["val_ppl"] if role == "teacher" else math.nan,
        "floor": floors["student"],
        "teacher_floor": floors["teacher"],
        "private": epsilon == 0,
        "dp_randomness": "",
        "accountant": "",
        "noise_multiplier": 0.0,
        "sample_rate": math.nan,
        "steps": art.privacy.get("steps", 0) or 0,
        "mechanisms": "",
        "histogram": "",
        "synthetic_size": 0,
        "wall_time_s": art.manifest["wall_time_s"],
        "run_time_s": round(time.time() - started, 1),
    }
