"""The DistilDP pipeline: each stage as a cached artifact, and one results row per method.

    public text -> tokenizer -> pretrained teacher / student               (non-private, free)
    private train -> DP teacher (+ DP code histogram) -> synthetic text   (DistilDP's budget)
    synthetic text + teacher -> student (KD or hard labels)                (post-processing: free)
    private train -> DP-SGD student, or DP teacher + DP-SGD KD student     (the baselines)
    private test -> perplexity of each model, beside the exact floor

Every method at a given (epsilon, delta) spends exactly that total, composed in one accountant
(`distildp.dp.privacy.calibrate_composed`), and every artifact records what it spent.

With `Settings.world_size` N > 1 (N processes launched by torchrun, each building the same Pipeline) the DP-SGD
stages train data-parallel and the synthetic set is sampled in N shards, every process taking part in those
builds (`ArtifactStore.build(collective=True)`); the other stages are built by rank 0 alone while the others
wait. Rank 0 writes every artifact; the others read them.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distildp.core import distributed
from distildp.core.artifacts import Artifact, ArtifactStore, write_json_atomic
from distildp.core.methods import REFERENCES, check_method, reference_epsilon, reference_role
from distildp.data.corpus import Corpus
from distildp.data.loaders import PublicText, load_corpus, load_public
from distildp.distill.generate import CONFIG_CODES_ATTR, generate_synthetic
from distildp.distill.kd import check_compatible, collate_kd, kd_examples, make_kd_loss_fn
from distildp.distill.synthetic_store import load_synthetic
from distildp.distill.synthetic_training import train_on_synthetic
from distildp.distill.teacher_cache import attach_teacher_states, teacher_states_bytes
from distildp.dp import epsilon_cache, histogram, privacy
from distildp.dp.dpsgd import pretrain, train_causal_lm
from distildp.lm.evaluate import BestOnHeldOut, corpus_floor, corpus_marginal_perplexity, corpus_metrics
from distildp.lm.models import (
    PRESETS,
    build_model,
    encode_plain,
    encode_with_prefix,
    is_pretrained_name,
    load_pretrained,
    load_tokenizer,
    resolve_device,
    train_tokenizer,
)
from distildp.lm.training import RANDOMNESS, TrainConfig, poisson_schedule, secret_seed
from distildp.pipeline import rows
from distildp.pipeline.settings import Settings


def _seeded(cfg: TrainConfig, seed: int) -> TrainConfig:
    return replace(cfg, seed=seed)


def _sharing_epsilons(method):
    """A Pipeline method whose accountants' epsilons are kept in the store's `.accounting/` (distildp.dp.epsilon_cache):
    the grid's processes compute each once."""

    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        with epsilon_cache.directory(self.store.root / ".accounting"):
            return method(self, *args, **kwargs)

    return wrapped


class Pipeline:
    """The stages for one Settings, reading and writing one artifact store."""

    def __init__(self, settings: Settings | None = None, store: ArtifactStore | None = None, progress: bool = True):
        self.settings = settings or Settings()
        self.store = store or ArtifactStore()
        self.progress = progress
        distributed.check_world_size(self.settings.world_size)  # before any stage: names the launch to use
        if self.data_parallel:
            distributed.init(self.settings.world_size, self.device)  # torchrun's process group

    @property
    def data_parallel(self) -> bool:
        """Several processes build the DP stages together."""
        return self.settings.world_size > 1

    # ------------------------------------------------------------------------------------ data
    @functools.cached_property
    def corpus(self) -> Corpus:
        return load_corpus(self.settings.dataset, **self.settings.dataset_options)

    @functools.cached_property
    def device(self) -> torch.device:
        return distributed.rank_device(resolve_device(self.settings.device))

    def load_model(self, name_or_path) -> tuple:
        """(model on this pipeline's device, tokenizer) from an artifact's directory or a hub name."""
        model, tok = load_pretrained(name_or_path)
        return model.to(self.device), tok

    @property
    def data_config(self) -> dict:
        """The private data's part of artifact keys; the built-in source's fingerprint makes a changed corpus
        generator give new artifacts instead of reusing stale ones."""
        return {
            "dataset": self.settings.dataset,
            "options": self.settings.dataset_options,
            "source_fingerprint": self.corpus.info.get("source_fingerprint"),
        }

    @functools.cached_property
    def public(self) -> PublicText:
        s = self.settings
        options = dict(s.public_options)
        if s.public_corpus == "builtin":
            options["coded_share"] = s.public_coded_share
        return load_public(s.public_corpus, s.n_public_docs, s.n_public_val, **options)

    @functools.cached_property
    def public_config(self) -> dict:
        """The public text's part of artifact keys: what it is and a hash of its documents."""
        s = self.settings
        public = self.public
        digest = hashlib.sha256(
            json.dumps([public.train, public.validation, public.train_prefixes, public.validation_prefixes]).encode()
        ).hexdigest()[:16]
        return {
            "corpus": s.public_corpus,
            "options": s.public_options,
            "n_docs": s.n_public_docs,
            "n_val": s.n_public_val,
            "coded_share": s.public_coded_share,
            "sha256": digest,
        }

    @functools.cached_property
    def delta(self) -> float:
        n = len(self.corpus.texts("train"))
        return privacy.resolve_delta(self.settings.delta, n, allow_one_over_n=self.settings.delta == "paper")

    # ------------------------------------------------------------------------------------ models
    def tokenizer(self) -> Artifact:
        """A byte-level BPE trained on public text (only used by the tiny presets)."""
        s = self.settings
        config = {"vocab_size": s.vocab_size, "public": self.public_config, "schema_of": s.dataset}

        def build(out: Path) -> dict:
            # the schema's texts give the control-code prefixes short encodings
            tok = train_tokenizer(self.public.train + self._schema_texts(), s.vocab_size)
            tok.save_pretrained(out)
            return {"metrics": {"vocab_size": len(tok)}, "privacy": privacy.public_data_record()}

        return self.store.build("tokenizer", config, build)

    def _schema_texts(self, repeats: int = 20) -> list[str]:
        """Control-code prefixes of every possible code (the public schema, not the data), so the tokenizer
        gives them short encodings; the model itself never sees them in pretraining."""
        source = self.corpus.source
        if source is None:
            return []
        return [self.corpus.code_prefix(key) for key in itertools.product(source.categories, source.stars)] * repeats

    def pretrain_seed(self, seed: int) -> int:
        """The seed of the public models a point at `seed` starts from (Settings.pretrain_seed)."""
        return seed if self.settings.pretrain_seed == "seed" else int(self.settings.pretrain_seed)

    def pretrained(self, role: str, seed: int = 0) -> Artifact:
        """The public starting point of the teacher or student: a hub model, or a tiny preset pretrained here
        until the public validation perplexity stops improving (see Settings.pretrain_tolerance)."""
        s = self.settings
        name = self.model_name(role)
        if is_pretrained_name(name):
            config = {"model": name}

            def build_hub(out: Path) -> dict:
                model, tok = self.load_model(name)
                model.save_pretrained(out)
                tok.save_pretrained(out)
                return {
                    "privacy": privacy.public_data_record(),
                    "metrics": self._evaluate(model, tok, "student"),
                    "extra": {"device": str(self.device)},
                }

            return self.store.build("pretrained", config, build_hub)
        # the preset's fields are part of the key: editing a preset must not reuse models built before
        train_cfg = _seeded(s.pretrain, self.pretrain_seed(seed))
        config = {
            "model": name,
            "architecture": PRESETS[name],
            "train": asdict(train_cfg),
            "tolerance": s.pretrain_tolerance,
            "public": self.public_config,
        }
        tokenizer_art = self.tokenizer()

        def build(out: Path) -> dict:
            tok = load_tokenizer(tokenizer_art.path)
            model = build_model(name, tok, seed=train_cfg.seed).to(self.device)
            public = self.public  # its headers are text here, scored like the rest
            report, selector = pretrain(
                model,
                tok,
                public.train,
                public.validation,
                train_cfg,
                prefixes=public.train_prefixes,
                validation_prefixes=public.validation_prefixes,
                tolerance=s.pretrain_tolerance,
                progress=self.progress,
            )
            model.save_pretrained(out)
            tok.save_pretrained(out)
            # Both roles are scored on plain text: the public models never saw control codes.
            metrics = self._evaluate_selected(model, tok, "public_val_ppl", selector, report.steps)
            return {
                "privacy": privacy.public_data_record(),
                "metrics": metrics,
                "extra": {"losses": report.losses, "public_val_curve": selector.curve, "device": str(self.device)},
            }

        return self.store.build("pretrained", config, build, inputs={"tokenizer": tokenizer_art})

    # ------------------------------------------------------------------------------------ privacy plans
    def dp_schedule(self, cfg: TrainConfig) -> tuple[float, int]:
        return poisson_schedule(len(self.corpus.texts("train")), cfg)

    def budget_parts(self, method: str) -> list[privacy.BudgetPart]:
        """The DP releases of `method`, each with its share of the budget."""
        s = self.settings
        teacher = self.dp_schedule(s.teacher_train)
        if method in ("distildp", "synthetic_only"):
            if s.histogram == "dp":
                return [
                    privacy.BudgetPart("teacher", 1 - s.histogram_share, *teacher),
                    privacy.BudgetPart.gaussian("histogram", s.histogram_share),
                ]
            return [privacy.BudgetPart("teacher", 1.0, *teacher)]
        if method == "dpkd":
            return [
                privacy.BudgetPart("teacher", s.dpkd_teacher_share, *teacher),
                privacy.BudgetPart("student", 1 - s.dpkd_teacher_share, *self.dp_schedule(s.dpkd_train)),
            ]
        if method == "dpsgd":
            return [privacy.BudgetPart("student", 1.0, *self.dp_schedule(s.student_train))]
        check_method(method, references=False)
        raise NotImplementedError(f"method {method!r} has no budget parts")

    def budget_shares(self, method: str) -> dict[str, float]:
        """Each DP release of `method` and its share of epsilon (before composition rescales the noise)."""
        return {part.name: part.share for part in self.budget_parts(method)}

    def private_train_config(self, role: str, kd: bool = False) -> TrainConfig:
        """The private fine-tuning recipe of a role: the teacher's, the DP-SGD student's or DPKD's student's."""
        s = self.settings
        return s.teacher_train if role == "teacher" else s.dpkd_train if kd else s.student_train

    @functools.lru_cache(maxsize=None)  # noqa: B019 (one Pipeline per process; cached in the store too)
    @_sharing_epsilons
    def plan(self, method: str, epsilon: float) -> privacy.ComposedCalibration:
        """Noise for every DP release of `method` so that together they spend exactly `epsilon`.

        Calibration takes seconds, so the result is an artifact too: every grid point reuses it."""
        s = self.settings
        parts = self.budget_parts(method)
        epsilon = privacy.check_epsilon(epsilon)
        if math.isinf(epsilon):
            return privacy.calibrate_composed(epsilon, self.delta, parts, s.accountant, scheme=s.budget_scheme)
        config = {
            "epsilon": epsilon,
            "delta": self.delta,
            "accountant": s.accountant,
            "scheme": s.budget_scheme,
            "parts": [asdict(p) for p in parts],
        }

        def build(out: Path) -> dict:
            cal = privacy.calibrate_composed(epsilon, self.delta, parts, s.accountant, scheme=s.budget_scheme)
            fields = {
                k: getattr(cal, k)
                for k in ("target_epsilon", "delta", "accountant", "scheme", "epsilon", "part_epsilons", "part_deltas")
            }
            write_json_atomic(out / "plan.json", {**fields, "noise_multipliers": cal.noise_multipliers()})
            return {"metrics": {"epsilon": cal.epsilon}}

        saved = json.loads((self.store.build("plan", config, build).path / "plan.json").read_text())
        noise = saved.pop("noise_multipliers")
        return privacy.ComposedCalibration(mechanisms={p.name: p.mechanism(noise[p.name]) for p in parts}, **saved)

    # ------------------------------------------------------------------------------------ private training
    def private_model(
        self, role: str, seed: int, noise_multiplier: float | None, epsilon: float, kd_teacher: Artifact | None = None
    ) -> Artifact:
        """Fine-tune on the private training split: DP-SGD at `noise_multiplier`, or non-private (None).

        role 'teacher' models code-prefixed text; role 'student' plain text, with the KD loss when
        `kd_teacher` is given (DPKD). No model selection on private data: the last step is kept.
        """
        s = self.settings
        private = noise_multiplier is not None
        collective = private and self.data_parallel  # non-private fine-tuning runs in one process
        train_cfg = _seeded(self.private_train_config(role, kd=kd_teacher is not None), seed)
        config = {
            "role": role,
            "data": self.data_config,
            "train": asdict(train_cfg),
            "noise_multiplier": noise_multiplier,
            "max_grad_norm": s.max_grad_norm,
            "delta": self.delta,
            "accountant": s.accountant,
            "grad_sample_mode": s.grad_sample_mode,
            "kd": asdict(s.kd_config()) if kd_teacher else None,
            **self._randomness_key(private),
        }
        inputs = {"pretrained": self.pretrained(role, seed)}
        if kd_teacher:
            inputs["teacher"] = kd_teacher

        def build(out: Path) -> dict:
            model, tok = self.load_model(inputs["pretrained"].path)
            texts, prefixes = self.corpus.texts("train"), self.corpus.prefixes("train")
            context = model.config.n_positions
            if role == "teacher":
                examples, collate, loss_fn = encode_with_prefix(tok, prefixes, texts, context), None, None
            else:
                examples = encode_plain(tok, texts, context)
                collate, loss_fn = None, None
                if kd_teacher:
                    teacher, teacher_tok = self.load_model(kd_teacher.path)
                    check_compatible(teacher_tok, tok)
                    examples = kd_examples(tok, texts, prefixes, context)
                    if s.alpha == 0 and teacher_states_bytes(teacher, examples) <= s.teacher_cache_gib * 2**30:
                        # the frozen teacher read once per document, not once per step: its states are its outputs
                        examples = attach_teacher_states(teacher, examples, tok.pad_token_id, s.teacher_context)
                    collate = lambda batch: collate_kd(batch, tok.pad_token_id)  # noqa: E731
                    loss_fn = make_kd_loss_fn(teacher, **asdict(s.kd_config()))
            kwargs = {"loss_fn": loss_fn} if loss_fn else {}
            report = train_causal_lm(
                model,
                examples,
                train_cfg,
                s.privacy_config(noise_multiplier, epsilon, self.delta),
                collate_fn=collate,
                progress=self.progress and distributed.is_main(),
                data_parallel=collective,
                **kwargs,
            )
            if collective and not distributed.is_main():
                return None  # every process holds the same model: rank 0 saves and evaluates it
            if role == "teacher":
                setattr(model.config, CONFIG_CODES_ATTR, list(self.corpus.code_columns.values()))
            model.save_pretrained(out)
            tok.save_pretrained(out)
            record = report.privacy_record() if private else {**privacy.nonprivate_record(), "steps": report.steps}
            record["model_selection"] = "none: the final step is kept (selection on private data would cost privacy)"
            metrics = {"train_loss_last": report.losses[-1], **self._evaluate(model, tok, role)}
            if role == "teacher" and not private:  # as a model of plain text, codes drawn as in the data
                metrics["test_ppl_marginal"] = self.marginal_ppl(model, tok, self.train_code_counts)
            return {
                "privacy": record,
                "metrics": metrics,
                "extra": {"losses": report.losses, "device": str(self.device)},
            }

        return self.store.build(f"private_{role}", config, build, inputs=inputs, seed=seed, collective=collective)

    # ------------------------------------------------------------------------------------ synthetic text
    def synthetic(self, teacher: Artifact, seed: int, histogram_noise: float | None) -> Artifact:
        """Sample the synthetic corpus from `teacher`; per-code counts from the (DP) histogram."""
        s = self.settings
        size = self.synthetic_count()
        mode = self.histogram_mode(histogram_noise)
        config = {
            "size": size,
            "histogram": mode,
            "histogram_noise": histogram_noise,
            "generation": asdict(s.generation),
            "data": self.data_config,
            **self._randomness_key(mode == "dp"),
        }

        def build(out: Path) -> dict | None:
            # one DP histogram for all processes (each drawing its own would release several), and one folder:
            # every process samples its shard of the chunks into rank 0's build directory
            hist, record = distributed.run_on_main(lambda: self.release_histogram(seed, histogram_noise))
            data_dir = distributed.broadcast(out / "data")
            names = list(self.corpus.code_columns.values())
            code_counts = [(dict(zip(names, key)), n) for key, n in hist.items() if n > 0]
            model, tok = self.load_model(teacher.path)
            result = generate_synthetic(
                model,
                tok,
                code_counts,
                data_dir,
                s.generation,
                seed=seed,
                progress=self.progress,
                code_columns=self.corpus.code_columns,
                sharded=self.data_parallel,
            )
            if not distributed.is_main():
                return None  # rank 0 evaluates and records the set
            # the test perplexity of what the synthetic text is drawn from (before top-k / top-p): the teacher
            # with codes drawn from the released histogram, scored like a student (gate 2 of the README)
            metrics = {"n_samples": result.n_samples, "teacher_marginal_ppl": self.marginal_ppl(model, tok, hist)}
            return {
                "privacy": record,
                "metrics": metrics,
                "extra": {
                    "histogram": {"|".join(k): n for k, n in hist.items()},
                    "generation": result.summary,
                    "device": str(self.device),
                },
            }

        return self.store.build(
            "synthetic", config, build, inputs={"teacher": teacher}, seed=seed, collective=self.data_parallel
        )

    @functools.cached_property
    def train_code_counts(self) -> Counter:
        """How many private training documents carry each code tuple (the histogram's private input)."""
        return self.corpus.code_counts("train")

    def synthetic_count(self) -> int:
        """How many synthetic documents to sample: synthetic_size, else synthetic_factor x the private records."""
        s = self.settings
        return s.synthetic_size or round(s.synthetic_factor * len(self.corpus.texts("train")))

    def histogram_mode(self, histogram_noise: float | None) -> str:
        """The histogram release actually used: 'dp' needs a noise multiplier (at epsilon = inf there is none,
        and the exact counts are released)."""
        return self.settings.histogram if histogram_noise is not None or self.settings.histogram != "dp" else "exact"

    def release_histogram(self, seed: int, histogram_noise: float | None) -> tuple[dict, dict]:
        """(code tuple -> number of synthetic documents, privacy record) as Settings.histogram says."""
        size, mode = self.synthetic_count(), self.histogram_mode(histogram_noise)
        keys, key_note = self.code_keys()
        counts = self.train_code_counts
        if mode == "dp":
            secret = self.settings.dp_randomness == "secret"
            noise_seed = np.random.default_rng(secret_seed()) if secret else seed
            hist, record = histogram.dp_histogram(counts, size, histogram_noise, seed=noise_seed, keys=keys)
            record["randomness"] = RANDOMNESS[self.settings.dp_randomness]
        elif mode == "exact":
            hist, record = histogram.exact_histogram(counts, size, keys=keys)
        else:
            hist, record = histogram.uniform_histogram(keys, size)
        record.setdefault("notes", []).extend(key_note)
        return hist, record

    def _randomness_key(self, private: bool) -> dict:
        """A secret-noise build is its own artifact: never the reproducible one of the same seed, nor reused by it."""
        return {"dp_randomness": "secret"} if private and self.settings.dp_randomness == "secret" else {}

    def code_keys(self) -> tuple[list[tuple[str, ...]], list[str]]:
        """The public set of possible codes (zeros included), and notes on it (Corpus.public_code_keys)."""
        return self.corpus.public_code_keys()

    # ------------------------------------------------------------------------------------ students
    def distilled_student(self, teacher: Artifact, synthetic: Artifact, seed: int, hard_labels_only: bool) -> Artifact:
        """Non-private student training on synthetic text, with model selection on held-out synthetic text."""
        s = self.settings
        # lam = 0 without hidden-state alignment IS the hard-label loss: the synthetic_only student, not a second copy
        hard_labels_only = hard_labels_only or (s.lam == 0 and s.alpha == 0)
        kd = None if hard_labels_only else asdict(s.kd_config())
        config = {
            "train": asdict(_seeded(s.distill_train, seed)),
            "kd": kd,
            "val_fraction": s.synthetic_val_fraction,
            "tolerance": s.distill_tolerance,
        }
        inputs = {"pretrained": self.pretrained("student", seed), "teacher": teacher, "synthetic": synthetic}

        def build(out: Path) -> dict:
            model, tok = self.load_model(inputs["pretrained"].path)
            frame = load_synthetic(synthetic.path / "data")
            code_rows = frame[list(self.corpus.code_columns)].astype(str).itertuples(index=False)
            prefixes = [self.corpus.code_prefix(row) for row in code_rows]
            teacher_model = None
            if kd:
                teacher_model, teacher_tok = self.load_model(teacher.path)
                check_compatible(teacher_tok, tok)
            done = train_on_synthetic(
                model,
                tok,
                frame["text"].tolist(),
                prefixes,
                s.synthetic_training(),
                seed,
                teacher=teacher_model,
                progress=self.progress,
            )
            model.save_pretrained(out)
            tok.save_pretrained(out)
            steps, selector = done.report.steps, done.selector
            record = privacy.nonprivate_record()
            record["notes"] = ["trained on synthetic text only: post-processing of the teacher and histogram"]
            record["model_selection"] = (
                f"held-out synthetic text ({done.n_val} samples), checked once per epoch; "
                f"best at step {selector.best_step} of {steps}"
            )
            return {
                "privacy": record,
                "metrics": self._evaluate_selected(model, tok, "synthetic_val_ppl", selector, steps),
                "extra": {
                    "losses": done.report.losses,
                    "synthetic_val_curve": selector.curve,
                    "device": str(self.device),
                    "teacher_states": done.teacher_states,
                },
            }

        return self.store.build("distilled_student", config, build, inputs=inputs, seed=seed)

    # ------------------------------------------------------------------------------------ evaluation
    def _evaluate_selected(self, model, tok, held_out: str, selector: BestOnHeldOut, steps: int) -> dict:
        """A student-role model kept at its best held-out step: that selection beside its test evaluation."""
        return {
            held_out: selector.best_ppl,
            "steps": steps,
            "best_step": selector.best_step,
            "converged": selector.converged,
            **self._evaluate(model, tok, "student"),
        }

    def _evaluate(self, model, tok, role: str) -> dict:
        """Test and validation perplexity, and the floor, as the role sees the private data (codes or not)."""
        s = self.settings
        stride, per_document = s.eval_stride, s.eval_per_document
        return corpus_metrics(model, tok, self.corpus, role, stride, per_document, progress=self.progress)

    def marginal_ppl(self, model, tok, code_counts: Counter | dict) -> float:
        """The teacher as a model of plain test text, codes drawn with weights `code_counts` (code tuple -> count)."""
        return corpus_marginal_perplexity(model, tok, self.corpus, code_counts, progress=self.progress)

    def floor(self, tok, role: str) -> float:
        """The exact floor for the role's view of the test split (codes given to teachers only)."""
        return corpus_floor(self.corpus, tok, role)

    # ------------------------------------------------------------------------------------ methods
    @_sharing_epsilons
    def artifacts(self, method: str, epsilon: float, seed: int = 0) -> dict[str, Artifact]:
        """Build (or reuse) every artifact of `method` at total budget `epsilon`, in order of the data flow:
        some of 'teacher', 'synthetic', and always 'student'; for a reference, its one model."""
        if method in REFERENCES:  # a reference model: the pretrained or non-private model of its role
            return {method: self.reference_model(method, seed)}
        epsilon = privacy.check_epsilon(epsilon)
        noise = self.noise(method, epsilon)
        if method in ("distildp", "synthetic_only"):
            teacher = self.private_model("teacher", seed, noise.get("teacher"), epsilon)
            synthetic = self.synthetic(teacher, seed, noise.get("histogram"))
            student = self.distilled_student(teacher, synthetic, seed, hard_labels_only=method == "synthetic_only")
            return {"teacher": teacher, "synthetic": synthetic, "student": student}
        if method == "dpkd":
            teacher = self.private_model("teacher", seed, noise.get("teacher"), epsilon)
            return {
                "teacher": teacher,
                "student": self.private_model("student", seed, noise.get("student"), epsilon, kd_teacher=teacher),
            }
        return {"student": self.private_model("student", seed, noise.get("student"), epsilon)}  # dpsgd

    def noise(self, method: str, epsilon: float) -> dict[str, float]:
        """The noise multiplier of each DP release of `method` at total budget `epsilon` (the plan's); empty at
        epsilon = inf, where every stage trains without noise and the histogram is released exactly."""
        check_method(method, references=False)
        epsilon = privacy.check_epsilon(epsilon)
        return {} if math.isinf(epsilon) else self.plan(method, epsilon).noise_multipliers()

    @_sharing_epsilons
    def run(self, method: str, epsilon: float, seed: int = 0) -> dict[str, Any]:
        """Train and evaluate one method at total budget `epsilon`; return its results row."""
        started = time.time()
        if method in REFERENCES:
            art = self.reference_model(method, seed)  # pretrained ones scored on plain text: they never saw codes
            floors = {role: self.floor_for(role) for role in ("student", "teacher")}
            return rows.reference_row(self.settings, self.delta, method, seed, art, floors, started)
        arts = self.artifacts(method, epsilon, seed)
        return rows.method_row(
            self.settings, self.delta, method, epsilon, seed, self.plan(method, epsilon), arts, started
        )

    def reference_model(self, method: str, seed: int = 0) -> Artifact:
        """pretrained_<role> (public data only) or nonprivate_<role> (fine-tuned on the private data, no DP)."""
        role = reference_role(method)
        if reference_epsilon(method) == 0:
            return self.pretrained(role, seed)
        return self.private_model(role, seed, None, math.inf)

    def floor_for(self, role: str) -> float:
        if self.corpus.source is None:
            return math.nan
        # a tiny preset's tokenizer is its own artifact: no need to wait for (or build) the other role's model
        path = self.pretrained(role).path if is_pretrained_name(self.model_name(role)) else self.tokenizer().path
        return self.floor(load_tokenizer(path), role)

    def model_name(self, role: str) -> str:
        return self.settings.teacher_model if role == "teacher" else self.settings.student_model
