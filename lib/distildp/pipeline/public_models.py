"""The public stages: the tokenizer (trained on public text) and the pretrained teacher and student (a hub model, or a
tiny preset pretrained here). Each is an artifact whose key is its config and inputs; no private data goes in."""

from __future__ import annotations

import itertools
from dataclasses import asdict, replace
from pathlib import Path

from distildp.core.manifests import Artifact
from distildp.dp import privacy
from distildp.dp.public_training import pretrain
from distildp.lm.evaluate import corpus_floor
from distildp.lm.models import PRESETS, build_model, is_pretrained_name, load_tokenizer, train_tokenizer
from distildp.pipeline.context import StageContext


def tokenizer(ctx: StageContext) -> Artifact:
    """A byte-level BPE trained on public text (only used by the tiny presets)."""
    s = ctx.settings
    config = {"vocab_size": s.vocab_size, "public": ctx.public_config, "schema_of": s.dataset}

    def build(out: Path) -> dict:
        # the schema's texts give the control-code prefixes short encodings
        tok = train_tokenizer(ctx.public.train + schema_texts(ctx), s.vocab_size)
        tok.save_pretrained(out)
        return {"metrics": {"vocab_size": len(tok)}, "privacy": privacy.public_data_record()}

    return ctx.store.build("tokenizer", config, build)


def schema_texts(ctx: StageContext, repeats: int = 20) -> list[str]:
    """Control-code prefixes the tokenizer should give short encodings: every possible code of the built-in
    source (its public schema, not the data), or else the prefixes of the coded public text (public too)."""
    source = ctx.raw_corpus.source  # the corpus as loaded: fitting it to the context needs this tokenizer
    if source is None:
        return [prefix for prefix in ctx.public.train_prefixes if prefix]
    return [ctx.raw_corpus.code_prefix(key) for key in itertools.product(source.categories, source.stars)] * repeats


def pretrained(ctx: StageContext, role: str, seed: int = 0) -> Artifact:
    """The public starting point of the teacher or student: a hub model, or a tiny preset pretrained here
    until the public validation perplexity stops improving (see Settings.pretrain_tolerance)."""
    name = ctx.model_name(role)
    if is_pretrained_name(name):
        return _hub_model(ctx, name)
    s = ctx.settings
    # the preset's fields are part of the key: editing a preset must not reuse models built before
    train_cfg = replace(s.pretrain, seed=ctx.pretrain_seed(seed))
    config = {
        "model": name,
        "architecture": PRESETS[name],
        "train": asdict(train_cfg),
        "tolerance": s.pretrain_tolerance,
        "public": ctx.public_config,
    }
    tokenizer_art = tokenizer(ctx)

    def build(out: Path) -> dict:
        ctx.corpus  # noqa: B018 (the private documents fit the context, or are refused, before any training)
        tok = load_tokenizer(tokenizer_art.path)
        model = build_model(name, tok, seed=train_cfg.seed).to(ctx.device)
        public = ctx.public  # its headers are text here, scored like the rest
        report, selector = pretrain(
            model,
            tok,
            public.train,
            public.validation,
            train_cfg,
            prefixes=public.train_prefixes,
            validation_prefixes=public.validation_prefixes,
            tolerance=s.pretrain_tolerance,
            progress=ctx.progress,
        )
        model.save_pretrained(out)
        tok.save_pretrained(out)
        # Both roles are scored on plain text: the public models never saw control codes.
        metrics = ctx.evaluate_selected(model, tok, "public_val_ppl", selector, report.steps)
        return {
            "privacy": privacy.public_data_record(),
            "metrics": metrics,
            "extra": {"losses": report.losses, "public_val_curve": selector.curve, "device": str(ctx.device)},
        }

    return ctx.store.build("pretrained", config, build, inputs={"tokenizer": tokenizer_art})


def _hub_model(ctx: StageContext, name: str) -> Artifact:
    """A hub model as it is, scored like a student."""

    def build(out: Path) -> dict:
        model, tok = ctx.load_model(name)
        model.save_pretrained(out)
        tok.save_pretrained(out)
        return {
            "privacy": privacy.public_data_record(),
            "metrics": ctx.evaluate(model, tok, "student"),
            "extra": {"device": str(ctx.device)},
        }

    return ctx.store.build("pretrained", {"model": name}, build)


def floor(ctx: StageContext, role: str) -> float:
    """The exact floor of the role's view of the test split, with the role's own tokenizer (a tiny preset's is its
    own artifact: no need to wait for, or build, the other role's model)."""
    if ctx.corpus.source is None:
        return float("nan")
    path = pretrained(ctx, role).path if is_pretrained_name(ctx.model_name(role)) else tokenizer(ctx).path
    return corpus_floor(ctx.corpus, load_tokenizer(path), role)
