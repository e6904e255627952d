"""The stages trained on the private data: the DP teacher (code-prefixed text), the DP-SGD student (plain text),
DPKD's student (plain text, the KD loss from a DP teacher) and DP-OPD's student (its own continuations of private
prompts, scored by a frozen teacher); each trained at its release's noise in a method's privacy plan, or
non-private without a plan (the references) or at epsilon = inf."""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from pathlib import Path

from distildp.core import distributed
from distildp.core.manifests import Artifact
from distildp.core.methods import COVERS_ALL, epsilon_covers
from distildp.distill.generate import CONFIG_CODES_ATTR
from distildp.distill.kd_batches import check_compatible, collate_kd, kd_examples, make_kd_loss_fn
from distildp.distill.on_policy import collate_prompts, make_on_policy_loss_fn, prompt_examples
from distildp.distill.teacher_cache import attach_teacher_states, teacher_states_bytes
from distildp.dp import privacy
from distildp.dp.calibration import ComposedCalibration
from distildp.dp.dpsgd import train_causal_lm
from distildp.lm.models import encode_plain, encode_with_prefix
from distildp.pipeline.context import StageContext
from distildp.pipeline.privacy_plan import private_train_config, release_noise
from distildp.pipeline.public_models import pretrained

NO_SELECTION = "none: the final step is kept (selection on private data would cost privacy)"
NONPRIVATE_TEACHER = (
    "DP-OPD's frozen teacher was fine-tuned on the private data without DP: every student update depends on every "
    "record through it, so the student's epsilon covers its own updates only"
)


def private_model(
    ctx: StageContext,
    role: str,
    seed: int,
    plan: ComposedCalibration | None = None,
    kd_teacher: Artifact | None = None,
) -> Artifact:
    """Fine-tune on the private training split: DP-SGD at the noise `plan` gives the role's release (its part
    named `role`), or non-private without a plan or at epsilon = inf.

    role 'teacher' models code-prefixed text; role 'student' plain text, with the KD loss when
    `kd_teacher` is given (DPKD). No model selection on private data: the last step is kept.
    """
    s = ctx.settings
    noise_multiplier = release_noise(plan, role)
    private = noise_multiplier is not None
    collective = private and ctx.data_parallel  # non-private fine-tuning runs in one process
    train_cfg = replace(private_train_config(s, role, kd=kd_teacher is not None), seed=seed)
    kd = asdict(s.kd_config()) if kd_teacher else None
    config = {**dp_sgd_key(ctx, role, train_cfg, noise_multiplier), "kd": kd, **ctx.randomness_key(private)}
    inputs = {"pretrained": pretrained(ctx, role, seed)}
    if kd_teacher:
        inputs["teacher"] = kd_teacher

    def build(out: Path) -> dict | None:
        model, tok = ctx.load_model(inputs["pretrained"].path)
        examples, extra = private_examples(ctx, model, tok, role, kd_teacher)
        report = train_causal_lm(
            model,
            examples,
            train_cfg,
            dp_sgd_privacy(ctx, plan, noise_multiplier),
            progress=ctx.progress and distributed.is_main(),
            data_parallel=collective,
            **extra,
        )
        if collective and not distributed.is_main():
            return None  # every process holds the same model: rank 0 saves and evaluates it
        if role == "teacher":
            setattr(model.config, CONFIG_CODES_ATTR, list(ctx.corpus.code_columns.values()))
        result = saved_run(ctx, model, tok, out, report, role, private)
        if role == "teacher" and not private:  # as a model of plain text, codes drawn as in the data
            result["metrics"]["test_ppl_marginal"] = ctx.marginal_ppl(model, tok, ctx.train_code_counts)
        return result

    return ctx.store.build(f"private_{role}", config, build, inputs=inputs, seed=seed, collective=collective)


def saved_run(ctx: StageContext, model, tok, out: Path, report, role: str, private: bool) -> dict:
    """A fine-tuned model saved in `out`, and what its artifact records: the privacy its run spent (DP-SGD's, or a
    non-private run's; no model selection: the last step), its losses and the role's test metrics."""
    model.save_pretrained(out)
    tok.save_pretrained(out)
    record = report.privacy_record() if private else {**privacy.nonprivate_record(), "steps": report.steps}
    record["model_selection"] = NO_SELECTION
    metrics = {"train_loss_last": report.losses[-1], **ctx.evaluate(model, tok, role)}
    return {"privacy": record, "metrics": metrics, "extra": {"losses": report.losses, "device": str(ctx.device)}}


def dp_sgd_privacy(ctx: StageContext, plan: ComposedCalibration | None, noise_multiplier: float | None):
    """The PrivacyConfig of a release trained at `noise_multiplier` within `plan` (None: non-private)."""
    epsilon = plan.target_epsilon if noise_multiplier is not None else math.inf
    return ctx.settings.privacy_config(noise_multiplier, epsilon, ctx.delta)


def dp_sgd_key(ctx: StageContext, role: str, train_cfg, noise_multiplier: float | None) -> dict:
    """What identifies a fine-tuning run on the private data, whatever its loss: the role, the data, the recipe and
    the DP-SGD mechanism (None: non-private)."""
    s = ctx.settings
    return {
        "role": role,
        "data": ctx.data_config,
        "train": asdict(train_cfg),
        "noise_multiplier": noise_multiplier,
        "max_grad_norm": s.max_grad_norm,
        "delta": ctx.delta,
        "accountant": s.accountant,
        "grad_sample_mode": s.grad_sample_mode,
    }


def private_examples(ctx: StageContext, model, tok, role: str, kd_teacher: Artifact | None) -> tuple[list, dict]:
    """The private training split as a role's examples, and what train_causal_lm needs besides (DPKD's collate_fn
    and KD loss_fn): a teacher reads code-prefixed text, a student plain text."""
    texts, prefixes = ctx.corpus.texts("train"), ctx.corpus.prefixes("train")
    context = model.config.n_positions
    if role == "teacher":
        return encode_with_prefix(tok, prefixes, texts, context), {"collate_fn": None}
    if not kd_teacher:
        return encode_plain(tok, texts, context), {"collate_fn": None}
    s = ctx.settings
    teacher, teacher_tok = ctx.load_model(kd_teacher.path)
    check_compatible(teacher_tok, tok)
    examples = kd_examples(tok, texts, prefixes, context)
    if s.alpha == 0 and teacher_states_bytes(teacher, examples) <= s.teacher_cache_gib * 2**30:
        # the frozen teacher read once per document, not once per step: its states are its outputs
        examples = attach_teacher_states(teacher, examples, tok.pad_token_id, s.teacher_context)
    collate = lambda batch: collate_kd(batch, tok.pad_token_id)  # noqa: E731
    return examples, {"collate_fn": collate, "loss_fn": make_kd_loss_fn(teacher, s.kd_config())}


def on_policy_student(ctx: StageContext, teacher: Artifact, seed: int, plan: ComposedCalibration | None) -> Artifact:
    """DP-OPD's student: DP-SGD at the noise of the plan's 'student' release on its own continuations of the private
    documents' prompts, each scored against the frozen `teacher` (distildp.distill.on_policy). A pretrained
    teacher ('public') reads plain text; a fine-tuned one reads the codes first, as it was trained."""
    s = ctx.settings
    noise_multiplier = release_noise(plan, "student")
    private = noise_multiplier is not None
    collective = private and ctx.data_parallel
    train_cfg = replace(s.opd_train, seed=seed)
    teacher_context = "none" if s.opd_teacher == "public" else s.teacher_context
    on_policy = {**asdict(s.on_policy), "teacher": s.opd_teacher, "teacher_context": teacher_context}
    config = {**dp_sgd_key(ctx, "student", train_cfg, noise_multiplier), "on_policy": on_policy}
    config.update(ctx.randomness_key(private))
    inputs = {"pretrained": pretrained(ctx, "student", seed), "teacher": teacher}

    def build(out: Path) -> dict | None:
        model, tok = ctx.load_model(inputs["pretrained"].path)
        frozen, teacher_tok = ctx.load_model(teacher.path)
        check_compatible(teacher_tok, tok)
        examples = prompt_examples(
            tok, ctx.corpus.texts("train"), ctx.corpus.prefixes("train"), s.on_policy.prompt_tokens
        )
        report = train_causal_lm(
            model,
            examples,
            train_cfg,
            dp_sgd_privacy(ctx, plan, noise_multiplier),
            loss_fn=make_on_policy_loss_fn(frozen, s.on_policy, tok.eos_token_id, tok.pad_token_id, teacher_context),
            collate_fn=collate_prompts,
            progress=ctx.progress and distributed.is_main(),
            data_parallel=collective,
        )
        if collective and not distributed.is_main():
            return None
        result = saved_run(ctx, model, tok, out, report, "student", private)
        covers = epsilon_covers("dpopd", s.opd_teacher)
        if covers != COVERS_ALL:  # never presented as epsilon-DP: a leak, as an exact histogram is
            result["privacy"].update(leak=NONPRIVATE_TEACHER, private=False, epsilon_covers=covers)
        return result

    return ctx.store.build("on_policy_student", config, build, inputs=inputs, seed=seed, collective=collective)
