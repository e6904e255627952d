"""The empirical privacy audit (distildp.audit.exposure: canaries and training sets; distildp.audit.mia: membership
inference and
the epsilon lower bound), each primitive checked against an independent reference: scikit-learn and a brute-force
count for the ROC metrics, exact binomial tails and scipy.stats.beta for Clopper-Pearson, a closed form for the
epsilon bound, a known distribution for the exposure extrapolation."""

import math
import pydoc_data.topics
import re
import shutil
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers import models as tok_models
from transformers import PreTrainedTokenizerFast

from distildp.audit import mia
from distildp.audit.exposure import (
    DEFAULT_SPACE,
    AuditError,
    SecretSpace,
    canary_exposure,
    canary_exposures,
    check_encodable,
    exposure_from_rank,
    extrapolated_fraction,
    rank_among,
    secrets_in_texts,
    sequence_nll,
)
from distildp.audit.provenance import synthetic_texts, training_set
from distildp.core.artifacts import ArtifactStore
from distildp.data.corpus import control_prefix
from distildp.data.loaders import load_corpus
from distildp.data.source import ReviewSource
from distildp.distill.generate import generate_synthetic
from distildp.lm.evaluate import perplexity
from distildp.lm.models import build_model, train_tokenizer
from distildp.lm.sampling import GenerationConfig

SPACE = SecretSpace(groups=(3,))  # 1,000 candidates: enumerable in a second with a tiny model
SECRET = "417"
DOCS = [
    "The soup was cold and the bread was stale.",
    "Friendly staff, great coffee, a quiet room.",
    "We came for the tacos and stayed for the music.",
    "The hotel pool was closed all week.",
    "Best pancakes in town, but the wait is long.",
    "Loud bar, cheap beer, good darts.",
    "The barber was quick and careful.",
    "Our room smelled of smoke and the sheets were thin.",
    "The museum shop sold lovely prints.",
    "Dinner took two hours to arrive.",
    "The gym was spotless and never crowded.",
    "Parking was a nightmare downtown.",
]


@pytest.fixture(scope="module")
def tok():
    """Trained on text without digits, so every digit is one token and all candidates are equally long: an
    untrained model then prefers none of them for its length alone (see test_exposure_of_an_untrained_model...)."""
    texts = list(pydoc_data.topics.topics.values())[:20] + DOCS * 3 + ["My secret code is ."] * 20
    return train_tokenizer([re.sub(r"[0-9]", "", t) for t in texts], vocab_size=400)


def tiny(tok, seed=0):
    return build_model("tiny-student", tok, seed=seed, n_embd=32, n_layer=1, n_head=2, n_positions=48)


def overfit(model, tok, texts, steps=150, lr=1e-2):
    """Plain (non-private) training until the model reproduces `texts`: [eos] text [eos], every token a target."""
    eos = tok.eos_token_id
    rows = [[eos] + ids + [eos] for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    width = max(map(len, rows))
    input_ids = torch.tensor([r + [eos] * (width - len(r)) for r in rows])
    labels = torch.tensor([r + [-100] * (width - len(r)) for r in rows])
    mask = (labels != -100).long()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(input_ids=input_ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def memorizer(tok):
    """A model trained to output the secret sentence (and to memorise DOCS[:6], the membership members)."""
    torch.manual_seed(0)
    return overfit(tiny(tok, seed=1), tok, [SPACE.scored_text(SECRET)] * 2 + DOCS[:6], steps=200)


# ------------------------------------------------------------------------------------------------ secrets
def test_secret_space_enumerates_and_indexes_every_candidate():
    assert SPACE.size == 1000 and [SPACE.secret(i) for i in (0, 7, 999)] == ["000", "007", "999"]
    assert all(SPACE.index(SPACE.secret(i)) == i for i in range(SPACE.size))
    assert DEFAULT_SPACE.size == 10**8 and DEFAULT_SPACE.secret(48217395) == "4821 7395"
    drawn = DEFAULT_SPACE.sample(500, np.random.default_rng(0), exclude="4821 7395")
    assert len(set(drawn)) == 500 and "4821 7395" not in drawn
    dense = SPACE.sample(999, np.random.default_rng(0), exclude=SECRET)  # every candidate but the secret
    assert sorted(dense) == sorted(SPACE.secret(i) for i in range(1000) if i != 417)
    with pytest.raises(AuditError, match="not in this candidate space"):
        DEFAULT_SPACE.index("48217395")


def test_default_space_is_the_format_the_corpus_inserts():
    corpus = load_corpus(
        "builtin", source=ReviewSource(0), n_train=40, n_val=10, n_test=10, canaries=3, canary_repeats=2
    )
    for canary in corpus.canaries:
        assert DEFAULT_SPACE.sentence(canary["secret"]) == canary["sentence"]
        DEFAULT_SPACE.index(canary["secret"])


def test_more_canaries_than_training_rows_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="lower canaries/canary_repeats or raise n_train"):
        load_corpus("builtin", source=ReviewSource(0), n_train=5, n_val=5, n_test=5, canaries=3, canary_repeats=2)


def test_a_canary_the_tokenizer_cannot_encode_is_refused(tok, memorizer):
    with pytest.raises(AuditError, match="special or unknown token"):
        canary_exposure(memorizer, tok, SECRET, SecretSpace("My <|endoftext|> code is {secret}.", (3,)))
    words = Tokenizer(tok_models.WordLevel({"[UNK]": 0, "my": 1, "code": 2}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    word_tok = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]")
    check_encodable(word_tok, "my code")
    with pytest.raises(AuditError, match=r"\['\[UNK\]'\]"):
        check_encodable(word_tok, "my zebra code")


def test_secrets_in_texts_finds_verbatim_copies():
    canaries = [{"secret": "4821 7395", "sentence": "My secret code is 4821 7395."}, "1111 2222"]
    texts = ["nothing here", "the code 4821 7395 leaked", "My secret code is 4821 7395.", "4821 739"]
    found = secrets_in_texts(canaries, texts)
    assert found[0] == {"secret": "4821 7395", "texts_with_secret": 2, "texts_with_sentence": 1, "first_text": 1}
    assert found[1] == {"secret": "1111 2222", "texts_with_secret": 0, "texts_with_sentence": None, "first_text": None}


# ------------------------------------------------------------------------------------------------ exposure
def test_exposure_from_rank_and_ties():
    assert exposure_from_rank(1, 1024) == 10 and exposure_from_rank(1024, 1024) == 0
    assert rank_among(2.0, np.array([1.0, 3.0, 2.0, 2.0])) == 1 + 1 + 2 / 2
    with pytest.raises(AuditError, match="rank 0"):
        exposure_from_rank(0, 10)


def test_sequence_nll_is_the_per_document_perplexity_sum(tok):
    model = tiny(tok)
    nll = sequence_nll(model, tok, DOCS[:4])
    assert nll.shape == (4,)
    assert nll.sum() == pytest.approx(perplexity(model, tok, DOCS[:4], per_document=True, progress=False).nll_sum)


def test_exposure_of_a_model_trained_on_the_secret_is_maximal(tok, memorizer):
    exposure = canary_exposure(memorizer, tok, {"secret": SECRET}, SPACE)
    assert exposure.method == "enumerated" and exposure.n_scored == 999
    assert exposure.rank == 1 and exposure.exposure == pytest.approx(math.log2(1000)) == exposure.max_exposure


def test_exposure_of_an_untrained_model_is_near_zero(tok):
    model = tiny(tok, seed=5).eval()
    secrets = SPACE.sample(6, np.random.default_rng(3))  # drawn at random, as insert_canaries draws them
    exposures = [canary_exposure(model, tok, s, SPACE).exposure for s in secrets]
    # a random rank among n gives log2(e) = 1.44 bits on average; the maximum here is log2(1000) = 9.97. (Not
    # every secret: an untrained GPT-2 with tied embeddings favours repeating its input token, so it ranks '999'
    # first. Compare a model's exposures with a reference model's before reading much into a few bits.)
    assert np.mean(exposures) < 3 and max(exposures) < 5


def test_a_model_that_cannot_tell_candidates_apart_exposes_nothing(tok):
    model = tiny(tok)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # every logit 0: all candidates equally likely
    exposure = canary_exposure(model, tok, SECRET, SPACE)
    assert exposure.exposure == pytest.approx(math.log2(1000) - math.log2(1 + 999 / 2))


def test_extrapolation_recovers_a_known_tail():
    rng = np.random.default_rng(0)
    sample = rng.normal(60.0, 3.0, 5000)  # candidate NLLs of a known distribution
    for share in (1e-3, 1e-6):
        secret_nll = stats.norm.ppf(share, 60.0, 3.0)
        assert -math.log2(extrapolated_fraction(secret_nll, sample)) == pytest.approx(-math.log2(share), abs=1.0)


def test_extrapolated_exposure_agrees_with_enumeration(tok, memorizer):
    space = SecretSpace(groups=(4,))  # 10,000 candidates
    model = tiny(tok, seed=2).eval()
    for secret in ("5290",):
        full = canary_exposure(model, tok, secret, space, method="enumerated")
        fitted = canary_exposure(model, tok, secret, space, method="extrapolated", n_samples=1000)
        assert fitted.method == "extrapolated" and fitted.n_scored == 1000
        assert fitted.exposure == pytest.approx(full.exposure, abs=1.0)
    # '4177' starts like the memorised '417': far in the tail, beyond what 300 samples can resolve by counting
    tail_full = canary_exposure(memorizer, tok, "4177", space, method="enumerated")
    tail_fitted = canary_exposure(memorizer, tok, "4177", space, method="extrapolated", n_samples=300)
    assert tail_full.exposure > math.log2(301) + 3 and tail_fitted.sample_exposure == pytest.approx(math.log2(301))
    assert tail_fitted.exposure == pytest.approx(tail_full.exposure, abs=1.0)


# ------------------------------------------------------------------------------------------------ ROC metrics
def brute_tpr_at_fpr(members, nonmembers, target):
    """Every threshold by hand: the best TPR of 'score >= t' among those with FPR <= target."""
    best = 0.0
    for t in np.r_[members, nonmembers, np.inf]:
        if np.mean(nonmembers >= t) <= target:
            best = max(best, float(np.mean(members >= t)))
    return best


def test_roc_metrics_equal_scikit_learn_and_a_hand_count():
    members, nonmembers = np.array([0.9, 0.8, 0.7, 0.3]), np.array([0.6, 0.5, 0.4, 0.2, 0.1])
    roc = mia.roc_metrics(members, nonmembers, fprs=(0.001, 0.2, 0.5), n_bootstrap=0)
    assert roc.auc.estimate == pytest.approx(17 / 20)  # 3 members beat all 5, one beats 2
    assert {f: t.estimate for f, t in roc.tpr_at_fpr.items()} == {0.001: 0.75, 0.2: 0.75, 0.5: 0.75}
    rng = np.random.default_rng(1)
    members, nonmembers = rng.normal(0.5, 1, 2000), rng.normal(0, 1, 2000)
    roc = mia.roc_metrics(members, nonmembers, n_bootstrap=100)
    labels, scores = np.r_[np.ones(2000), np.zeros(2000)], np.r_[members, nonmembers]
    assert roc.auc.estimate == roc_auc_score(labels, scores)
    fpr, tpr, _ = roc_curve(labels, scores)
    for target, interval in roc.tpr_at_fpr.items():
        assert interval.estimate == brute_tpr_at_fpr(members, nonmembers, target) == tpr[fpr <= target].max()
        assert interval.low <= interval.estimate <= interval.high
    assert roc.auc.low < roc.auc.estimate < roc.auc.high and roc.auc.high - roc.auc.low < 0.06
    assert roc.as_dict()["tpr_at_0.001"] == roc.tpr_at_fpr[0.001].estimate and roc.min_fpr == 1 / 2000


def test_loss_and_reference_attacks_find_memorised_documents(tok, memorizer):
    members, nonmembers = DOCS[:6], DOCS[6:]
    loss = mia.attack_scores(memorizer, tok, members + nonmembers)
    ref = mia.attack_scores(memorizer, tok, members + nonmembers, reference=tiny(tok, seed=9))
    labels = [1] * 6 + [0] * 6
    assert roc_auc_score(labels, loss) == 1 and roc_auc_score(labels, ref) == 1
    assert np.allclose(mia.reference_attack(np.array([1.0, 5.0]), np.array([1.5, 5.1])), [0.5, 0.1])
    with pytest.raises(AuditError, match="same documents"):
        mia.reference_attack(np.ones(3), np.ones(2))
    with pytest.raises(AuditError, match="non-finite"):
        mia.roc_metrics([1.0, np.nan], [0.0, 1.0])


# ------------------------------------------------------------------------------------------------ epsilon bound
def exact_clopper_pearson(k, n, confidence):
    """Bisection on exact binomial tails in rational arithmetic: the interval's definition, without scipy."""
    half = Fraction(1 - Fraction(confidence).limit_denominator(10**6), 2)

    def tail_at_least(p):
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))

    def solve(f, target):  # f increasing in p
        lo, hi = Fraction(0), Fraction(1)
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
        return float((lo + hi) / 2)

    low = 0.0 if k == 0 else solve(tail_at_least, half)
    high = (
        1.0 if k == n else solve(lambda p: tail_at_least(p) - math.comb(n, k) * p**k * (1 - p) ** (n - k), 1 - half)
    )  # P(X >= k + 1) = 1 - alpha / 2
    return low, high


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (7, 20), (20, 20), (45, 60)])
def test_clopper_pearson_matches_exact_tails_and_scipy_beta(k, n):
    low, high = mia.clopper_pearson(k, n, 0.95)
    ref_low, ref_high = exact_clopper_pearson(k, n, 0.95)
    assert low == pytest.approx(ref_low, abs=1e-9) and high == pytest.approx(ref_high, abs=1e-9)
    beta_low = stats.beta.ppf(0.025, k, n - k + 1) if k else 0.0
    beta_high = stats.beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    assert low == pytest.approx(beta_low, abs=1e-12) and high == pytest.approx(beta_high, abs=1e-12)


def test_clopper_pearson_reference_value_and_bad_input():
    assert mia.clopper_pearson(0, 10, 0.95) == pytest.approx((0.0, 0.30849), abs=1e-5)  # 1 - 0.025^(1/10)
    with pytest.raises(AuditError, match="successes"):
        mia.clopper_pearson(11, 10)
    with pytest.raises(AuditError, match="confidence"):
        mia.clopper_pearson(1, 10, 95)


def test_epsilon_bound_of_a_perfect_attack_is_the_closed_form():
    # all 1,000 members flagged, no non-member: TPR_low = c and FPR_high = 1 - c with c = 0.025^(1/1000)
    bound = mia.epsilon_from_counts(1000, 1000, 0, 1000, delta=0.0)
    c = 0.025 ** (1 / 1000)
    assert bound.epsilon == pytest.approx(math.log(c / (1 - c)), rel=1e-9) == pytest.approx(5.6006, abs=1e-4)
    # with delta and an imperfect attack: the formula on scipy.stats.beta's quantiles
    bound = mia.epsilon_from_counts(900, 1000, 100, 1000, delta=1e-5)
    tpr_low, fpr_high = stats.beta.ppf(0.025, 900, 101), stats.beta.ppf(0.975, 101, 900)
    expected = max(math.log((tpr_low - 1e-5) / fpr_high), math.log((1 - fpr_high - 1e-5) / (1 - tpr_low)))
    assert bound.epsilon == pytest.approx(expected, rel=1e-9)
    assert mia.epsilon_from_counts(500, 1000, 500, 1000, delta=1e-5).epsilon == 0.0


def test_epsilon_lower_bound_from_scores_selects_on_one_half_and_bounds_on_the_other():
    rng = np.random.default_rng(0)
    separable = mia.epsilon_lower_bound(rng.normal(10, 1, 2000), rng.normal(0, 1, 2000), delta=1e-5)
    c = 0.025 ** (1 / 1000)  # the evaluation half: 1,000 per group, all classified right
    assert separable.n_members == separable.n_nonmembers == 1000
    assert separable.epsilon == pytest.approx(math.log((c - 1e-5) / (1 - c)), rel=1e-6)
    same = mia.epsilon_lower_bound(rng.normal(0, 1, 2000), rng.normal(0, 1, 2000), delta=1e-5)
    assert same.epsilon < 0.2
    with pytest.raises(AuditError, match="cannot be split"):
        mia.epsilon_lower_bound([1.0], [0.0, 1.0], delta=1e-5)


def test_a_lower_bound_above_the_accounted_epsilon_fails_loudly():
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(10, 1, 1000), rng.normal(0, 1, 1000)
    with pytest.raises(mia.PrivacyBugError, match="PRIVACY BUG.*exceeds its accounted epsilon 2"):
        mia.membership_audit(members, nonmembers, accounted_epsilon=2.0, delta=1e-5, n_bootstrap=50)
    row = mia.membership_audit(members, nonmembers, accounted_epsilon=math.inf, delta=1e-5, n_bootstrap=50)
    assert row["epsilon_lower_bound"] > 4 and row["epsilon_accounted"] == math.inf and row["auc"] == 1.0
    mia.check_lower_bound(1.9, 2.0)
    with pytest.raises(mia.PrivacyBugError):
        mia.check_lower_bound(2.1, 2.0)


# ------------------------------------------------------------------------------------------------ training sets
DATA_OPTIONS = {"n_train": 60, "n_val": 20, "n_test": 20, "canaries": 2, "canary_repeats": 3}


def data_config(options=DATA_OPTIONS, fingerprint=None):
    """The `data` entry the pipeline writes into a private stage's config (Pipeline.data_config)."""
    corpus = load_corpus("builtin", **options)
    return {
        "dataset": "builtin",
        "options": options,
        "source_fingerprint": fingerprint or corpus.info["source_fingerprint"],
    }


def save_model(tok):
    def build(out):
        tiny(tok).save_pretrained(out)
        return {"privacy": {"epsilon": 2.0, "private": True}}

    return build


def test_training_set_is_rebuilt_from_manifests_through_the_teacher(tmp_path, tok):
    store = ArtifactStore(tmp_path)
    teacher = store.build("private_teacher", {"role": "teacher", "data": data_config()}, save_model(tok))

    student = store.build("distilled_student", {"train": {}}, save_model(tok), inputs={"teacher": teacher})
    corpus = load_corpus("builtin", **DATA_OPTIONS)
    for path, stage in ((teacher.path, "private_teacher"), (student.path, "distilled_student")):
        found = training_set(path)
        assert found.members == corpus.texts("train")
        assert found.nonmembers == corpus.texts("validation") + corpus.texts("test")
        assert found.member_prefixes == corpus.prefixes("train") and found.canaries == corpus.canaries
        assert len(found.canaries) == 2 and all(
            c["sentence"] in found.members[r] for c in found.canaries for r in c["rows"]
        )
        assert found.chain[0].startswith(stage) and found.chain[-1] == f"private_teacher/{teacher.key}"
    assert training_set(teacher.path).direct and not training_set(student.path).direct
    assert training_set(teacher.path, nonmember_splits=("test",)).nonmember_prefixes == corpus.prefixes("test")
    with pytest.raises(AuditError, match="never 'train'"):
        training_set(teacher.path, nonmember_splits=("train",))
    assert training_set(student.path).privacy[f"private_teacher/{teacher.key}"] == {"epsilon": 2.0, "private": True}


def test_an_on_policy_student_is_audited_against_the_private_documents_it_prompted_from(tmp_path, tok):
    """DP-OPD's student records the private data whose prompts it trained on: its members are those documents, read
    directly (their first tokens), whichever teacher scored it."""
    store = ArtifactStore(tmp_path)
    public_teacher = store.build("pretrained", {"model": "tiny-teacher"}, save_model(tok))
    student = store.build(
        "on_policy_student",
        {"role": "student", "data": data_config()},
        save_model(tok),
        inputs={"teacher": public_teacher},
    )
    found = training_set(student.path)
    corpus = load_corpus("builtin", **DATA_OPTIONS)
    assert found.direct and found.members == corpus.texts("train") and found.canaries == corpus.canaries
    assert found.trained_on == "private prompts, its own continuations scored by its teacher"
    assert found.chain == [f"on_policy_student/{student.key}"]


def test_canary_exposures_of_a_training_set_score_each_canary_with_its_row_codes(tmp_path, tok):
    teacher = ArtifactStore(tmp_path).build("private_teacher", {"data": data_config()}, save_model(tok))
    found = training_set(teacher.path)
    model = tiny(tok, seed=6).eval()
    plain = canary_exposures(model, tok, found, method="extrapolated", n_samples=40)
    coded = canary_exposures(model, tok, found, with_codes=True, method="extrapolated", n_samples=40)
    assert [e.secret for e in plain] == [c["secret"] for c in found.canaries] and len(plain) == 2
    prefix = found.member_prefixes[found.canaries[0]["rows"][0]]
    expected = sequence_nll(model, tok, [" " + found.canaries[0]["sentence"]], [prefix])[0]
    assert coded[0].secret_nll == pytest.approx(expected) and coded[0].secret_nll != pytest.approx(plain[0].secret_nll)
    assert all(0 <= e.exposure <= e.max_exposure == pytest.approx(math.log2(1e8)) for e in plain + coded)
    found.canaries = []
    with pytest.raises(AuditError, match="holds no canaries.*canary_repeats"):
        canary_exposures(model, tok, found)


def test_audit_refuses_a_model_without_a_manifest(tmp_path, tok):
    tiny(tok).save_pretrained(tmp_path / "hand_saved")
    with pytest.raises(AuditError, match="no manifest.json.*a model saved by hand cannot be matched"):
        training_set(tmp_path / "hand_saved")
    with pytest.raises(AuditError, match="does not exist"):
        synthetic_texts(tmp_path / "missing")


def test_audit_refuses_a_training_set_it_cannot_rebuild(tmp_path, tok):
    store = ArtifactStore(tmp_path)
    changed = store.build("private_student", {"data": data_config(fingerprint="0" * 16)}, save_model(tok))
    with pytest.raises(AuditError, match="fingerprint '0000000000000000'.*corpus generator changed"):
        training_set(changed.path)
    gone = store.build(
        "private_student", {"data": {"dataset": f"csv:{tmp_path / 'gone'}", "options": {}}}, save_model(tok)
    )
    with pytest.raises(AuditError, match="does not load"):
        training_set(gone.path)
    unrecorded = store.build("private_student", {"role": "student"}, save_model(tok))
    with pytest.raises(AuditError, match="records no private data config"):
        training_set(unrecorded.path)
    public = store.build("pretrained", {"model": "tiny-student"}, save_model(tok))
    with pytest.raises(AuditError, match="not trained on private data"):
        training_set(public.path)
    orphan = store.build(
        "distilled_student",
        {"train": {}},
        save_model(tok),
        inputs={"teacher": store.build("private_teacher", {"data": data_config()}, save_model(tok))},
    )
    shutil.rmtree(tmp_path / "private_teacher")
    with pytest.raises(AuditError, match="not a finished pipeline artifact"):
        training_set(orphan.path)


def test_synthetic_text_of_a_student_is_found_and_searched_for_secrets(tmp_path, tok):
    """A teacher that memorised a secret behind its control code writes it into the synthetic text."""
    codes = {"Business Category": "Cafes"}
    teacher = overfit(tiny(tok, seed=4), tok, [control_prefix(codes) + SPACE.scored_text(SECRET)], steps=150)
    store = ArtifactStore(tmp_path)
    teacher_art = store.build("private_teacher", {"data": data_config()}, save_model(tok))

    def sample(out):
        generate_synthetic(
            teacher, tok, [(codes, 4)], out / "data", GenerationConfig(max_length=48, batch_size=4), progress=False
        )

    synthetic = store.build("synthetic", {"data": data_config()}, sample, inputs={"teacher": teacher_art})
    student = store.build(
        "distilled_student", {"train": {}}, save_model(tok), inputs={"teacher": teacher_art, "synthetic": synthetic}
    )
    texts = synthetic_texts(student.path)
    assert texts == synthetic_texts(synthetic.path) and len(texts) == 4
    assert secrets_in_texts([SECRET, "999"], texts)[0]["texts_with_secret"] >= 3
    assert secrets_in_texts([SECRET, "999"], texts)[1]["texts_with_secret"] == 0
    with pytest.raises(AuditError, match="has no synthetic text"):
        synthetic_texts(teacher_art.path)


# ------------------------------------------------------------------------------------------------ the pipeline
@pytest.mark.slow
def test_every_model_of_the_smoke_pipeline_can_be_audited(smoke_store):
    """End to end on real artifacts (minutes): the training set of each method's models is found from their
    manifests, with the canaries the corpus inserted, and the audit runs beside the accounted epsilon."""
    from distildp.lm.models import load_pretrained
    from distildp.pipeline import Pipeline
    from distildp.pipeline.public_models import pretrained
    from distildp.pipeline.settings import make_settings

    settings = make_settings("smoke", {"dataset_options": {"canaries": 2, "canary_repeats": 4}})
    pipe = Pipeline(settings, ArtifactStore(smoke_store), progress=False)
    epsilon = 4.0
    for method in ("dpsgd", "dpkd", "distildp"):
        accounted = pipe.plan(method, epsilon).epsilon
        for role, art in pipe.artifacts(method, epsilon).items():
            found = training_set(art.path)
            assert found.members == pipe.corpus.texts("train")
            assert found.nonmembers == pipe.corpus.texts("validation") + pipe.corpus.texts("test")
            assert found.canaries == pipe.corpus.canaries and len(found.canaries) == 2
            if role == "synthetic":
                leaks = secrets_in_texts(found.canaries, synthetic_texts(art.path))
                assert [leak["secret"] for leak in leaks] == [c["secret"] for c in found.canaries]
                continue
            model, tok = load_pretrained(art.path)
            teacher = role == "teacher"
            exposures = canary_exposures(model, tok, found, with_codes=teacher, method="extrapolated", n_samples=200)
            assert all(0 <= e.exposure <= e.max_exposure for e in exposures)
            reference, reference_tok = load_pretrained(pretrained(pipe, "teacher" if teacher else "student").path)
            scores = [
                mia.attack_scores(
                    model,
                    tok,
                    texts,
                    prefixes if teacher else None,
                    reference=reference,
                    reference_tokenizer=reference_tok,
                )
                for texts, prefixes in (
                    (found.members, found.member_prefixes),
                    (found.nonmembers, found.nonmember_prefixes),
                )
            ]
            row = mia.membership_audit(
                *scores, accounted_epsilon=accounted, delta=pipe.delta, n_bootstrap=100, what=f"{method}'s {role}"
            )
            assert 0 <= row["auc"] <= 1 and 0 <= row["epsilon_lower_bound"] <= accounted
    with pytest.raises(AuditError, match="not trained on private data"):
        training_set(pretrained(pipe, "student").path)


@pytest.mark.slow
@pytest.mark.parametrize("teacher", ["public", "dp", "nonprivate"])
def test_dpopd_is_audited_with_each_teacher(smoke_store, teacher):
    """End to end on real artifacts: DP-OPD's models that saw private data are audited (its pretrained teacher, public
    data only, is not), each against the bound that covers it end to end (inf beside a non-private teacher)."""
    from distildp.audit.method_audit import AuditConfig, audit_method
    from distildp.pipeline import Pipeline
    from distildp.pipeline.settings import make_settings

    overrides = {"opd_teacher": teacher, "dataset_options": {"canaries": 2, "canary_repeats": 4}}
    pipe = Pipeline(make_settings("smoke", overrides), ArtifactStore(smoke_store), progress=False)
    rows = audit_method(pipe, "dpopd", 4.0, config=AuditConfig(n_candidates=50, n_bootstrap=50), progress=False)
    models = {row["model"]: row for row in rows}
    assert list(models) == (["student"] if teacher == "public" else ["teacher", "student"])
    student = models["student"]
    assert (student["stage"], student["opd_teacher"]) == ("on_policy_student", teacher)
    assert student["trained_on"].startswith("private prompts") and len(student["canaries"]) == 2
    covered = teacher != "nonprivate"
    assert student["epsilon_covers"] == ("every use of the private data" if covered else "student updates only")
    assert student["epsilon_spent"] == pytest.approx(pipe.plan("dpopd", 4.0).epsilon)
    assert all(row["epsilon_accounted"] == (student["epsilon_spent"] if covered else math.inf) for row in rows)
    assert all(0 <= row["epsilon_lower_bound"] <= row["epsilon_accounted"] for row in rows)
