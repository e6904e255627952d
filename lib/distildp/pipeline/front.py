"""The DistilDP pipeline's front: `Pipeline` plans a method's privacy, builds (or reuses) the artifacts it needs and
turns them into one results row.

    public text -> tokenizer -> pretrained teacher / student               (non-private, free)
    private train -> DP teacher (+ DP code histogram) -> synthetic text   (DistilDP's budget)
    synthetic text + teacher -> student (KD or hard labels)                (post-processing: free)
    private train -> DP-SGD student, or DP teacher + DP-SGD KD student     (the baselines)
    private test -> perplexity of each model, beside the exact floor

Every method at a given (epsilon, delta) spends exactly that total, composed in one accountant
(`distildp.pipeline.privacy_plan`), and every artifact records what it spent. Each stage is a function of its own
module, given the Pipeline as its `StageContext`: `public_models`, `private_models`, `synthetic_stage`, `students`.

With `Settings.world_size` N > 1 (N processes launched by torchrun, each building the same Pipeline) the DP-SGD
stages train data-parallel and the synthetic set is sampled in N shards, every process taking part in those
builds (`ArtifactStore.build(collective=True)`); the other stages are built by rank 0 alone while the others
wait. Rank 0 writes every artifact; the others read them.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from distildp.core.manifests import Artifact
from distildp.core.methods import REFERENCES, check_method, reference_epsilon, reference_role
from distildp.dp import calibration, privacy
from distildp.lm.models import PRESETS, load_pretrained_tokenizer, load_tokenizer
from distildp.pipeline import privacy_plan, public_models, rows
from distildp.pipeline.context import StageContext
from distildp.pipeline.private_models import on_policy_student, private_model
from distildp.pipeline.students import distilled_student
from distildp.pipeline.synthetic_stage import synthetic


class Pipeline(StageContext):
    """The stages for one Settings, reading and writing one artifact store: the data (`StageContext`), the privacy
    plan of a method at a budget, the artifacts it builds, and its results row."""

    @functools.lru_cache(maxsize=None)  # noqa: B019 (one Pipeline per process; cached in the store too)
    def plan(self, method: str, epsilon: float) -> calibration.ComposedCalibration:
        """Noise for every DP release of `method` so that together they spend exactly `epsilon`."""
        epsilon = privacy.check_epsilon(epsilon)
        with privacy_plan.sharing_epsilons(self):
            return privacy_plan.calibrate(self, method, epsilon)

    def budget_shares(self, method: str) -> dict[str, float]:
        """Each DP release of `method` and its share of epsilon (before composition rescales the noise)."""
        return {part.name: part.share for part in privacy_plan.budget_parts(self, method)}

    def artifacts(self, method: str, epsilon: float, seed: int = 0) -> dict[str, Artifact]:
        """Build (or reuse) every artifact of `method` at total budget `epsilon`, in order of the data flow:
        some of 'teacher', 'synthetic', and always 'student'; for a reference, its one model. The method's privacy
        plan is made once and handed to each stage, which trains its release at the plan's noise."""
        if method in REFERENCES:  # a reference model: the pretrained or non-private model of its role
            return {method: self.reference_model(method, seed)}
        check_method(method, references=False)
        plan = self.plan(method, epsilon)
        with privacy_plan.sharing_epsilons(self):
            if method in ("distildp", "synthetic_only"):
                teacher = private_model(self, "teacher", seed, plan)
                synthetic_set = synthetic(self, teacher, seed, plan)
                hard_labels_only = method == "synthetic_only"
                student = distilled_student(self, teacher, synthetic_set, seed, hard_labels_only)
                return {"teacher": teacher, "synthetic": synthetic_set, "student": student}
            if method == "dpkd":
                teacher = private_model(self, "teacher", seed, plan)
                student = private_model(self, "student", seed, plan, kd_teacher=teacher)
                return {"teacher": teacher, "student": student}
            if method == "dpopd":
                teacher = self.opd_teacher(seed, plan)
                return {"teacher": teacher, "student": on_policy_student(self, teacher, seed, plan)}
            return {"student": private_model(self, "student", seed, plan)}  # dpsgd

    def opd_teacher(self, seed: int, plan: calibration.ComposedCalibration) -> Artifact:
        """DP-OPD's frozen teacher, as `Settings.opd_teacher` says: the pretrained one ('public'), a DP one trained at
        the plan's teacher noise ('dp'), or one fine-tuned on the private data without DP ('nonprivate')."""
        variant = self.settings.opd_teacher
        if variant == "public":
            return public_models.pretrained(self, "teacher", seed)
        return private_model(self, "teacher", seed, plan if variant == "dp" else None)

    def run(self, method: str, epsilon: float, seed: int = 0) -> dict[str, Any]:
        """Train and evaluate one method at total budget `epsilon`; return its results row."""
        started = time.time()
        with privacy_plan.sharing_epsilons(self):
            if method in REFERENCES:
                art = self.reference_model(method, seed)  # pretrained ones scored on plain text: they never saw codes
                floors = {role: self.floor(role) for role in ("student", "teacher")}
                return rows.reference_row(self.settings, self.delta, method, seed, art, floors, started)
            arts = self.artifacts(method, epsilon, seed)
            plan = self.plan(method, epsilon)  # the one artifacts used (cached): its record goes into the row
            return rows.method_row(self.settings, self.delta, method, epsilon, seed, plan, arts, started)

    def reference_model(self, method: str, seed: int = 0) -> Artifact:
        """pretrained_<role> (public data only) or nonprivate_<role> (fine-tuned on the private data, no DP)."""
        role = reference_role(method)
        if reference_epsilon(method) == 0:
            return public_models.pretrained(self, role, seed)
        return private_model(self, role, seed)

    def length_tokenizer(self):
        """The teacher's tokenizer (it reads codes and text): a tiny preset's is the tokenizer stage's artifact."""
        name = self.model_name("teacher")
        if name in PRESETS:
            return load_tokenizer(public_models.tokenizer(self).path)
        return load_pretrained_tokenizer(name)

    def floor(self, role: str) -> float:
        """The exact floor of the role's view of the test split (nan without a known source)."""
        return public_models.floor(self, role)
