"""What a run depends on besides (method, epsilon, seed): `Settings`, the named profiles, and every check of
user overrides, so that a notebook and the benchmark runner refuse the same bad value with the same message.

    make_settings(profile, overrides)   profile dict  <- overrides merged in (nested configs as dicts)
                                        -> names, types (core.values), allowed values, dataset options (Settings)
                                        -> delta against the private set's size, csv folders (Settings.validate)

Numbers that YAML 1.1 reads as text (1e-5, a quoted 0.4) are refused with the way to write them.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from distildp.core.methods import OPD_TEACHERS
from distildp.core.values import fields_problem, number_hint
from distildp.data.label_split import check_disjoint
from distildp.data.lengths import LONG_DOCUMENTS
from distildp.data.loaders import corpus_loader, corpus_options, public_options, train_size
from distildp.distill.kd import KD_WEIGHTINGS, TEACHER_CONTEXTS, KDConfig, validate_kd_weights
from distildp.distill.on_policy import OnPolicyConfig
from distildp.distill.synthetic_training import SyntheticTrainingConfig
from distildp.dp import calibration, privacy
from distildp.dp.config import GRAD_SAMPLE_MODES, RANDOMNESS, PrivacyConfig
from distildp.lm.sampling import GenerationConfig
from distildp.lm.training import TrainConfig

HISTOGRAMS = ("dp", "exact", "uniform")


@dataclass
class Settings:
    """Everything a run depends on besides (method, epsilon, seed). Defaults: the embedded default.

    The embedded default is a miniature of the paper's regime (see docs/embedded_default.md):
    public pretraining that covers the private domain, a teacher with 8.2x the student's parameters, a private
    set large enough for DP-SGD's noise per step (sigma / batch) to be within a few times the paper's, and a
    synthetic set of 4x the private training set.
    """

    dataset: str = "builtin"
    dataset_options: dict = field(default_factory=dict)  # passed to load_corpus (builtin: n_train, n_val, n_test)
    # Public pretraining text (distildp.data.loaders.load_public): 'builtin' (in-domain reviews + prose), 'prose'
    # (off-domain), 'csv:<dir>' or 'hub:<dataset>[:<config>]'; public_options go to its loader.
    public_corpus: str = "builtin"
    public_options: dict = field(default_factory=dict)
    n_public_docs: int | None = 10000  # public reviews (builtin) or a cap on csv/hub documents (None: all)
    n_public_val: int = 1000  # held-out public documents that tell when pretraining has converged
    # share of the public documents with labels (built-in reviews; csv/hub label columns) written behind their codes
    public_coded_share: float = 0.5
    teacher_model: str = "tiny-teacher"  # a tiny preset, a hub name (gpt2-large) or a save_pretrained dir
    student_model: str = "tiny-student"
    vocab_size: int = 2048  # tokenizer trained on public text (tiny presets only); the output layer dominates cost
    # Public pretraining runs until the public validation perplexity improves by less than `pretrain_tolerance`
    # (relative) between two checks half an epoch apart, or `pretrain.epochs` run out; the best check is kept.
    pretrain: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            epochs=8, batch_size=32, lr=5e-3, weight_decay=0.01, warmup_steps=100, schedule="warmup_linear"
        )
    )
    pretrain_tolerance: float = 0.01
    pretrain_seed: int | str = 0  # an int: one public model for every point; 'seed': each point's own seed
    # DP-SGD (or, at epsilon = inf, plain fine-tuning) on the private data: large Poisson batches. No warm-up:
    # a step at lr 0 wastes budget. Each method's learning rate was chosen on the private validation split
    # from the same grid of values (benchmarks/grids/tune.yaml).
    teacher_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=3, batch_size=1000, physical_batch_size=100, lr=3e-3)
    )
    student_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=3, batch_size=1000, physical_batch_size=100, lr=3e-3)
    )
    dpkd_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=3, batch_size=1000, physical_batch_size=100, lr=3e-3)
    )
    # Non-private distillation on the synthetic data, grouped by length (samples vary in length, so random
    # batches would be mostly padding). As in the paper, it runs every epoch and keeps the one with the best
    # held-out synthetic perplexity (distill_tolerance = 0). A tolerance > 0 stops at the first epoch that improves
    # on the best by less than that (relative): cheaper, but one noisy epoch can stop a student that still learns.
    distill_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            epochs=8, batch_size=64, lr=1e-2, warmup_steps=20, schedule="warmup_linear", group_by_length=True
        )
    )
    distill_tolerance: float = 0.0
    max_grad_norm: float = 1.0
    # 'secret': DP randomness (Poisson batches, DP-SGD noise, histogram noise) from OS entropy, as the guarantee
    # assumes; 'reproducible': derived from the seed, for teaching and benchmarks on synthetic corpora, and every
    # manifest and row it touches says so (not a releasable model)
    dp_randomness: str = "secret"
    accountant: str = "prv"
    delta: float | str | None = None  # None: below 1/N (privacy.resolve_delta); 'paper': 1/N
    budget_scheme: str = "composed"  # 'split': the paper's plain epsilon/2 + epsilon/2 for DPKD
    grad_sample_mode: str = "bookkeeping"  # one backward pass (distildp.dp.bookkeeping); or 'hooks', 'ghost'
    histogram: str = "dp"  # 'dp' (Gaussian, composed with the teacher), 'exact' (paper; NOT private), 'uniform'
    histogram_share: float = 0.05  # share of epsilon spent on the DP histogram
    dpkd_teacher_share: float = 0.5
    # DP-OPD (distildp.distill.on_policy): DP-SGD on the student's own continuations of private prompts, scored by a
    # frozen teacher: 'dp' (a DP teacher, opd_teacher_share of epsilon), 'public' (the pretrained one) or
    # 'nonprivate' (fine-tuned without DP: its rows say their epsilon covers the student's updates only)
    opd_teacher: str = "dp"
    opd_teacher_share: float = 0.5
    opd_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=3, batch_size=1000, physical_batch_size=100, lr=3e-3)
    )
    on_policy: OnPolicyConfig = field(default_factory=OnPolicyConfig)
    synthetic_size: int | None = None  # None: synthetic_factor x the private training records
    synthetic_factor: float = 4.0
    synthetic_val_fraction: float = 0.05  # held-out synthetic text for the student's model selection
    # The teacher's own distribution (no top-k, top-p or n-gram ban): perplexity scores all of it, and the truncations
    # the paper uses make the synthetic text unlike real text (the paper's settings: profile 'paper', or
    # generation: {top_k: 50, top_p: 0.9, no_repeat_ngram_size: 2})
    generation: GenerationConfig = field(
        default_factory=lambda: GenerationConfig(top_k=0, top_p=1.0, no_repeat_ngram_size=0)
    )
    lam: float = 0.4
    temperature: float = 1.0
    alpha: float = 0.0
    # 'token_mean': each loss term averaged over the sequence's scored tokens; 'paper_sum': the paper's code,
    # whose KL is summed over positions (KLDivLoss 'batchmean' on (B, T, V)) while its CE is a token mean
    kd_weighting: str = "paper_sum"
    teacher_context: str = "code_prefix"  # or 'none' (the paper's code-free teacher)
    # Distillation keeps the frozen teacher's outputs for the whole synthetic set when they fit in this many GiB
    # (distildp.distill.teacher_cache): its probabilities in float16, else its last hidden states, so no step runs
    # its body; DPKD's student keeps the states for the private set. 0 runs the teacher every step. Not part of the
    # student's identity: the same loss up to float rounding (float16's, for the probabilities).
    teacher_cache_gib: float = 4.0
    # Documents longer than max_length tokens (None: the models' context), codes included, are refused before any
    # training, cut to fit ('truncate'), or cut in training only ('truncate_training'); private documents are never
    # chunked (distildp.data.lengths says why)
    max_length: int | None = None
    long_documents: str = "refuse"
    eval_per_document: bool = True  # each test document in its own window, as models are trained
    eval_stride: int | None = None  # sliding-window stride over the joined test stream (None: half the context)
    # Where models train and run: 'auto' (a CUDA GPU if torch sees one), 'cpu', 'cuda', 'cuda:N'. Not part of
    # any artifact's identity (the same recipe on another device is the same experiment); manifests record it.
    device: str = "auto"
    # Processes that train each DP model together (data-parallel DP-SGD) and share the synthetic set's sampling,
    # launched by torchrun (distildp.core.distributed). Not part of any artifact's identity: the same mechanism
    # (sigma, q, steps, epsilon) on more processes is the same experiment; manifests record it.
    world_size: int = 1

    def __post_init__(self) -> None:
        # types first: a number that YAML read as text would otherwise fail below with a bare TypeError
        problem = fields_problem(self, Settings)
        if problem:
            raise ValueError(str(problem))
        if self.histogram not in HISTOGRAMS:
            raise ValueError(f"histogram={self.histogram!r}; choose one of {HISTOGRAMS}")
        validate_kd_weights(self.lam, self.temperature, self.alpha)
        if self.dp_randomness not in RANDOMNESS:
            raise ValueError(f"dp_randomness={self.dp_randomness!r}; choose one of {sorted(RANDOMNESS)}")
        if self.kd_weighting not in KD_WEIGHTINGS:
            raise ValueError(f"kd_weighting={self.kd_weighting!r}; choose one of {KD_WEIGHTINGS}")
        if not 0 <= self.public_coded_share <= 1:
            raise ValueError(f"public_coded_share={self.public_coded_share} must lie in [0, 1]: a share of documents")
        for name in ("histogram_share", "dpkd_teacher_share", "opd_teacher_share"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must lie in (0, 1): it is a share of epsilon")
        if not (isinstance(self.pretrain_seed, int) or self.pretrain_seed == "seed"):
            raise ValueError(
                f"pretrain_seed={self.pretrain_seed!r}; use an int (one public model for every "
                f"point) or 'seed' (each point pretrains with its own seed)"
            )
        if self.max_length is not None and self.max_length < 8:
            raise ValueError(f"max_length={self.max_length} tokens leaves no room for codes and text; use 8 or more")
        if not self.synthetic_factor > 0:
            raise ValueError(f"synthetic_factor={self.synthetic_factor} must be > 0")
        if self.world_size < 1:
            raise ValueError(f"world_size={self.world_size}; it is a number of processes, 1 or more")
        if not self.teacher_cache_gib >= 0:
            raise ValueError(f"teacher_cache_gib={self.teacher_cache_gib} must be >= 0 (0 = no cache)")
        for name in ("pretrain_tolerance", "distill_tolerance"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must lie in [0, 1) (0: run every epoch)")
        for name, known in (
            ("accountant", privacy.ACCOUNTANTS),
            ("budget_scheme", calibration.SCHEMES),
            ("grad_sample_mode", GRAD_SAMPLE_MODES),
            ("teacher_context", TEACHER_CONTEXTS),
            ("opd_teacher", OPD_TEACHERS),
            ("long_documents", LONG_DOCUMENTS),
        ):
            if getattr(self, name) not in known:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {tuple(known)}")
        _check_delta_form(self.delta)
        _check_options("dataset", self.dataset, "dataset_options", self.dataset_options, corpus_options, corpus_loader)
        _check_options("public_corpus", self.public_corpus, "public_options", self.public_options, public_options)

    def validate(self) -> Settings:
        """The checks that need the private data's size N (field values are checked on construction): a csv
        folder must exist, and `delta` must resolve as the pipeline resolves it (privacy.resolve_delta: a number
        below 1/N). N is read cheaply (data.train_size: the built-in corpus's n_train, train.csv's rows); for a
        hub dataset it is unknown until downloaded, and delta is checked when the pipeline loads it. Returns self."""
        if self.dataset.startswith("csv:") and self.public_corpus.startswith("csv:"):
            check_disjoint(self.dataset[4:], self.public_corpus[4:])  # when a label split claims disjoint labels
        n = train_size(self.dataset, self.dataset_options)
        if n is not None:
            try:
                privacy.resolve_delta(self.delta, n, allow_one_over_n=self.delta == "paper")
            except ValueError as err:
                raise ValueError(f"dataset {self.dataset!r} has {n} training documents: {err}") from err
        return self

    def privacy_config(self, noise_multiplier: float | None, epsilon: float, delta: float) -> PrivacyConfig:
        """DP-SGD at `noise_multiplier` spending (`epsilon`, `delta`), clipped, accounted and randomised as these
        settings say; None: non-private training (epsilon and delta unused)."""
        private = noise_multiplier is not None
        return PrivacyConfig(
            target_epsilon=epsilon if private else math.inf,
            delta=delta if private else None,
            max_grad_norm=self.max_grad_norm,
            accountant=self.accountant,
            noise_multiplier=noise_multiplier,
            grad_sample_mode=self.grad_sample_mode,
            allow_delta_one_over_n=self.delta == "paper",
            secret_randomness=self.dp_randomness == "secret",
        )

    def kd_config(self) -> KDConfig:
        """The KD loss's settings (artifact keys record them as `asdict(settings.kd_config())`)."""
        return KDConfig(self.lam, self.temperature, self.alpha, self.teacher_context, self.kd_weighting)

    def synthetic_training(self) -> SyntheticTrainingConfig:
        """How a student trains on synthetic text: `distill_train`, the KD loss, model selection, the teacher cache."""
        return SyntheticTrainingConfig(
            self.distill_train,
            self.kd_config(),
            self.synthetic_val_fraction,
            self.distill_tolerance,
            self.teacher_cache_gib,
        )

    def as_config(self) -> dict:
        config = asdict(self)
        # at their defaults, fields added later are left out: settings recorded before they existed still match
        for name, default in (("world_size", 1), ("max_length", None), ("long_documents", "refuse")):
            if config[name] == default:
                del config[name]
        return config


# ---------------------------------------------------------------------------------------- profiles
# Named starting points; a notebook or grid picks one and overrides single fields.
_SMOKE_PRIVATE = {"epochs": 1, "batch_size": 50, "physical_batch_size": None, "warmup_steps": 0}
_PAPER_PRIVATE = {"epochs": 5, "batch_size": 1024, "physical_batch_size": 32, "lr": 5e-4}
PROFILES: dict[str, dict[str, Any]] = {
    # seconds on 2 cores: for tests and notebook smoke runs, not for conclusions
    "smoke": {
        "dp_randomness": "reproducible",
        "dataset_options": {"n_train": 200, "n_val": 40, "n_test": 40},
        "n_public_docs": 200,
        "n_public_val": 40,
        "vocab_size": 512,
        "teacher_model": "tiny-teacher",
        "pretrain": {"epochs": 1, "warmup_steps": 2},
        # its 512-token vocabulary makes a few built-in documents longer than the context: evaluated whole
        "long_documents": "truncate_training",
        "teacher_train": _SMOKE_PRIVATE,
        "student_train": _SMOKE_PRIVATE,
        "dpkd_train": _SMOKE_PRIVATE,
        "opd_train": _SMOKE_PRIVATE,
        "on_policy": {"continuation_tokens": 16},
        "distill_train": {"epochs": 2, "batch_size": 16, "warmup_steps": 0},
        "synthetic_size": 48,
        "generation": {"batch_size": 16, "chunk_size": 24, "max_length": 64},
    },
    # the embedded default (the README's `make run`). Its private corpus is synthetic, so its DP noise is derived from
    # the seed: the committed tables can be regenerated, and every row says the noise was reproducible.
    "quick": {"dp_randomness": "reproducible"},
    # the embedded default with every seed pretraining its own public models: the spread covers pretraining too
    "full": {"dp_randomness": "reproducible", "pretrain_seed": "seed"},
    # the paper's setting on a GPU: GPT-2 Large teacher, DistilGPT2 student, Yelp with category and stars
    "paper": {
        "dataset": "yelp",
        "dataset_options": {},
        "teacher_model": "gpt2-large",
        "student_model": "distilgpt2",
        "teacher_train": _PAPER_PRIVATE,
        "student_train": _PAPER_PRIVATE,
        "dpkd_train": _PAPER_PRIVATE,
        "opd_train": _PAPER_PRIVATE,
        "distill_train": {"epochs": 5, "batch_size": 32, "lr": 5e-5},
        "synthetic_size": 100_000,
        "generation": {"batch_size": 256, "chunk_size": 4096},
    },
}
NESTED = {
    "pretrain": TrainConfig,
    "teacher_train": TrainConfig,
    "student_train": TrainConfig,
    "dpkd_train": TrainConfig,
    "opd_train": TrainConfig,
    "distill_train": TrainConfig,
    "generation": GenerationConfig,
    "on_policy": OnPolicyConfig,
}


def make_settings(profile: str = "quick", overrides: Mapping[str, Any] | None = None) -> Settings:
    """Settings of a named profile with `overrides` applied (nested configs take dicts of their fields).

    Every check the benchmark runner makes of a grid point's overrides happens here, so a notebook (whose first
    call this is) fails before any stage runs, with the runner's message: names, types, allowed values, dataset
    options, then `Settings.validate` (delta against the private set's size, csv folders present)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    if not isinstance(overrides or {}, Mapping):
        raise ValueError(f"overrides must be a mapping of Settings fields, got {overrides!r}")
    overrides = dict(overrides or {})
    merged = _without_foreign_profile_options(profile, merge_overrides(PROFILES[profile], overrides), overrides)
    known = {f for f in Settings.__dataclass_fields__}
    unknown = sorted(set(merged) - known)
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; settings are {sorted(known)}")
    defaults = Settings()
    kwargs = {}
    for name, value in merged.items():
        if name in NESTED:
            cls = NESTED[name]
            if not isinstance(value, Mapping):
                raise ValueError(f"{name} must be a mapping of {cls.__name__} fields, got {value!r}")
            bad = sorted(set(value) - set(cls.__dataclass_fields__))
            if bad:
                raise ValueError(f"unknown field(s) {bad} in {name}; its fields are {sorted(cls.__dataclass_fields__)}")
            problem = fields_problem(value, cls, f"{name}.")  # before the config's own checks compare a str to 0
            if problem:
                raise ValueError(str(problem))
            value = replace(getattr(defaults, name), **value)
        kwargs[name] = value
    return Settings(**kwargs).validate()


def _without_foreign_profile_options(profile: str, merged: dict, overrides: dict) -> dict:
    """`merged` without the profile's dataset_options that the chosen dataset does not take, with a warning.

    A profile's dataset_options size its own dataset (smoke's n_train, n_val, n_test are the built-in corpus's);
    with another dataset (csv:<dir>) they would make its loader fail, and overrides cannot remove them (they are
    merged, not replaced). So they are dropped. The user's own dataset_options are never dropped: ones that do not
    apply are refused by Settings with the options the dataset takes."""
    from_profile = PROFILES[profile].get("dataset_options") or {}
    options = merged.get("dataset_options")
    if not from_profile or not isinstance(options, dict):
        return merged
    dataset = merged.get("dataset", Settings.__dataclass_fields__["dataset"].default)
    try:
        accepted = corpus_options(dataset)
    except (ValueError, AttributeError):
        return merged  # an unknown dataset (or not a name): Settings says so
    own = overrides.get("dataset_options") if isinstance(overrides.get("dataset_options"), dict) else {}
    dropped = sorted(k for k in from_profile if k not in accepted and k not in own)
    if dropped:
        warnings.warn(
            f"profile {profile!r}: its dataset_options {dropped} do not apply to dataset {dataset!r} "
            f"(which takes {sorted(accepted)}) and are left out",
            stacklevel=3,
        )
        merged = {**merged, "dataset_options": {k: v for k, v in options.items() if k not in dropped}}
    return merged


def merge_overrides(base: dict, extra: dict) -> dict:
    """Recursive dict merge: `extra` wins, nested dicts are merged rather than replaced."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_overrides(merged[key], value)
        else:
            merged[key] = value
    return merged


def dotted_override(name: str, value: Any) -> dict:
    """'teacher_train.epochs', 2 -> {'teacher_train': {'epochs': 2}}: how grids name a nested field."""
    head, _, rest = name.partition(".")
    return {head: dotted_override(rest, value) if rest else value}


def check_setting_name(name: str) -> None:
    """Refuse a name (dotted for nested fields, as a grid's axes and ablation knobs are) that is no Settings field."""
    known = sorted(f.name for f in fields(Settings))
    top = name.split(".", 1)[0]
    if top not in known:
        raise ValueError(
            f"{top!r} is not a Settings field (nested fields are dotted, like teacher_train.epochs); fields: {known}"
        )


# ---------------------------------------------------------------------------------------- validation
def _check_delta_form(delta: Any) -> None:
    """delta is None (below 1/N), 'paper' (1/N) or a number in (0, 1); whether it is below 1/N needs N
    (Settings.validate)."""
    if isinstance(delta, str) and delta != "paper":
        hint = number_hint(delta)
        raise ValueError(
            f"delta={delta!r}: use a number below 1/N, None (the default: the largest power of ten "
            f"below 1/N) or 'paper' (1/N, as the paper)" + (f"; {hint}" if hint else "")
        )
    if delta is not None and delta != "paper" and not 0 < delta < 1:
        raise ValueError(
            f"delta={delta!r} must lie strictly between 0 and 1 (and below 1/N); or use None (the default) or 'paper'"
        )


def _check_options(key: str, name: str, options_key: str, options: dict, accepted_of, loader=None) -> None:
    """Every option is a parameter of the loader that `name` chooses (and of the type it declares, given `loader`)."""
    try:
        accepted = accepted_of(name)
    except ValueError as err:
        raise ValueError(f"{key}={name!r}: {err}") from err
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"{options_key} {unknown} do not apply to {key} {name!r}: it takes {sorted(accepted) or 'no options'}"
        )
    problem = fields_problem(options, loader(name), f"{options_key}.") if loader else None
    if problem:
        raise ValueError(str(problem))
