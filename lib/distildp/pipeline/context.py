"""What every stage reads (`StageContext`): the settings, the artifact store, the private corpus and the public text,
the device, the parts of artifact keys that name the data, and the evaluation every model gets. A `Pipeline` is one.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter

import torch

from distildp.core import distributed
from distildp.core.artifacts import ArtifactStore
from distildp.data.corpus import Corpus
from distildp.data.lengths import fit_corpus
from distildp.data.loaders import PublicText, load_corpus, load_public
from distildp.dp import privacy
from distildp.lm.evaluate import BestOnHeldOut, corpus_marginal_perplexity, corpus_metrics
from distildp.lm.models import load_pretrained, model_context, resolve_device
from distildp.pipeline.settings import Settings


class StageContext:
    """The data, store and device of one Settings: what the stage functions (`public_models`, `private_models`,
    `synthetic_stage`, `students`) are given."""

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
    def raw_corpus(self) -> Corpus:
        """The private corpus as its files hold it, before documents are fitted to the context."""
        return load_corpus(self.settings.dataset, **self.settings.dataset_options)

    @functools.cached_property
    def corpus(self) -> Corpus:
        """The private corpus with every document within `max_length` tokens, codes included: a longer one is
        refused or cut, as Settings.long_documents says (distildp.data.lengths)."""
        return fit_corpus(self.raw_corpus, self.length_tokenizer(), self.max_length, self.settings.long_documents)

    @functools.cached_property
    def context_length(self) -> int:
        """The shorter of the teacher's and the student's contexts (positions)."""
        return min(model_context(self.model_name(role)) for role in ("teacher", "student"))

    @property
    def max_length(self) -> int:
        """The longest document, in tokens as the teacher reads it: Settings.max_length, or the context."""
        wanted = self.settings.max_length
        if wanted is not None and wanted > self.context_length:
            raise ValueError(
                f"max_length={wanted} exceeds the models' context of {self.context_length} tokens; "
                f"use max_length <= {self.context_length} (or leave it unset: the context)"
            )
        if wanted is not None and wanted < self.context_length and self.settings.long_documents == "truncate_training":
            raise ValueError(
                f"long_documents='truncate_training' cuts documents at the models' context ({self.context_length} "
                f"tokens) in training only; to cut them at max_length={wanted} use long_documents='truncate'"
            )
        return wanted or self.context_length

    def length_tokenizer(self):
        """The teacher's tokenizer (it reads codes and text): documents are measured with it. A `Pipeline`'s, which
        knows the tokenizer stage."""
        raise NotImplementedError("a StageContext subclass (Pipeline) names the tokenizer documents are measured with")

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
        s = self.settings
        lengths = (
            {"lengths": {"max_length": self.max_length, "long_documents": s.long_documents}}
            if s.max_length is not None or s.long_documents != "refuse"
            else {}  # the default, kept out: keys made before the setting existed still match
        )
        split = {"label_split": self.corpus.info["label_split"]} if "label_split" in self.corpus.info else {}
        return {
            "dataset": s.dataset,
            "options": s.dataset_options,
            "source_fingerprint": self.corpus.info.get("source_fingerprint"),
            **lengths,
            **split,
        }

    @functools.cached_property
    def public(self) -> PublicText:
        s = self.settings
        options = dict(s.public_options)
        if s.public_corpus != "prose":  # prose has no labels to write codes from
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

    @functools.cached_property
    def train_code_counts(self) -> Counter:
        """How many private training documents carry each code tuple (the histogram's private input)."""
        return self.corpus.code_counts("train")

    def code_keys(self) -> tuple[list[tuple[str, ...]], list[str]]:
        """The public set of possible codes (zeros included), and notes on it (Corpus.public_code_keys)."""
        return self.corpus.public_code_keys()

    def model_name(self, role: str) -> str:
        return self.settings.teacher_model if role == "teacher" else self.settings.student_model

    def pretrain_seed(self, seed: int) -> int:
        """The seed of the public models a point at `seed` starts from (Settings.pretrain_seed)."""
        return seed if self.settings.pretrain_seed == "seed" else int(self.settings.pretrain_seed)

    def randomness_key(self, private: bool) -> dict:
        """A secret-noise build is its own artifact: never the reproducible one of the same seed, nor reused by it."""
        return {"dp_randomness": "secret"} if private and self.settings.dp_randomness == "secret" else {}

    # ------------------------------------------------------------------------------------ evaluation
    def evaluate(self, model, tok, role: str) -> dict:
        """Test and validation perplexity, and the floor, as the role sees the private data (codes or not)."""
        s = self.settings
        stride, per_document = s.eval_stride, s.eval_per_document
        return corpus_metrics(model, tok, self.corpus, role, stride, per_document, progress=self.progress)

    def evaluate_selected(self, model, tok, held_out: str, selector: BestOnHeldOut, steps: int) -> dict:
        """A student-role model kept at its best held-out step: that selection beside its test evaluation."""
        return {
            held_out: selector.best_ppl,
            "steps": steps,
            "best_step": selector.best_step,
            "converged": selector.converged,
            **self.evaluate(model, tok, "student"),
        }

    def marginal_ppl(self, model, tok, code_counts: Counter | dict) -> float:
        """The teacher as a model of plain test text, codes drawn with weights `code_counts` (code tuple -> count)."""
        return corpus_marginal_perplexity(model, tok, self.corpus, code_counts, progress=self.progress)
