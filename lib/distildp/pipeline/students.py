"""Stage 3 wired through the store: a student trained on the synthetic set, with the KD loss from the DP teacher
(DistilDP) or on hard labels only (synthetic-only); post-processing, so it spends no privacy."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from distildp.core.manifests import Artifact
from distildp.distill.kd_batches import check_compatible
from distildp.distill.synthetic_store import load_synthetic
from distildp.distill.synthetic_training import SyntheticTraining, train_on_synthetic
from distildp.dp import privacy
from distildp.pipeline.context import StageContext
from distildp.pipeline.public_models import pretrained

POST_PROCESSING = "trained on synthetic text only: post-processing of the teacher and histogram"


def distilled_student(
    ctx: StageContext, teacher: Artifact, synthetic: Artifact, seed: int, hard_labels_only: bool
) -> Artifact:
    """Non-private student training on synthetic text, with model selection on held-out synthetic text."""
    s = ctx.settings
    # lam = 0 without hidden-state alignment IS the hard-label loss: the synthetic_only student, not a second copy
    hard_labels_only = hard_labels_only or (s.lam == 0 and s.alpha == 0)
    kd = None if hard_labels_only else asdict(s.kd_config())
    config = {
        "train": asdict(replace(s.distill_train, seed=seed)),
        "kd": kd,
        "val_fraction": s.synthetic_val_fraction,
        "tolerance": s.distill_tolerance,
    }
    inputs = {"pretrained": pretrained(ctx, "student", seed), "teacher": teacher, "synthetic": synthetic}

    def build(out: Path) -> dict:
        model, tok = ctx.load_model(inputs["pretrained"].path)
        frame = load_synthetic(synthetic.path / "data")
        code_rows = frame[list(ctx.corpus.code_columns)].astype(str).itertuples(index=False)
        prefixes = [ctx.corpus.code_prefix(row) for row in code_rows]
        teacher_model = None
        if kd:
            teacher_model, teacher_tok = ctx.load_model(teacher.path)
            check_compatible(teacher_tok, tok)
        texts, training = frame["text"].tolist(), s.synthetic_training()
        done = train_on_synthetic(model, tok, texts, prefixes, training, seed, teacher_model, ctx.progress)
        model.save_pretrained(out)
        tok.save_pretrained(out)
        return _student_record(ctx, model, tok, done)

    return ctx.store.build("distilled_student", config, build, inputs=inputs, seed=seed)


def _student_record(ctx: StageContext, model, tok, done: SyntheticTraining) -> dict:
    """What a distilled student's manifest records: no privacy spent, how it was selected, its evaluation."""
    steps, selector = done.report.steps, done.selector
    record = privacy.nonprivate_record()
    record["notes"] = [POST_PROCESSING]
    record["model_selection"] = (
        f"held-out synthetic text ({done.n_val} samples), checked once per epoch; "
        f"best at step {selector.best_step} of {steps}"
    )
    return {
        "privacy": record,
        "metrics": ctx.evaluate_selected(model, tok, "synthetic_val_ppl", selector, steps),
        "extra": {
            "losses": done.report.losses,
            "synthetic_val_curve": selector.curve,
            "device": str(ctx.device),
            "teacher_states": done.teacher_states,
        },
    }
