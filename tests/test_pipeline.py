"""The pipeline end to end on the smoke profile: every method's row, its privacy, the floor, the cache."""

import inspect
import json
import math
from dataclasses import asdict, replace
from types import SimpleNamespace

import pytest
import torch
from dp_accounting import dp_event, pld

from distildp.core.artifacts import ArtifactStore
from distildp.core.manifests import config_hash
from distildp.core.methods import COVERS_ALL, COVERS_STUDENT_ONLY, METHODS, REFERENCES
from distildp.distill.kd import KDConfig
from distildp.distill.kd_batches import make_kd_loss_fn
from distildp.dp import privacy
from distildp.lm.models import PRESETS
from distildp.pipeline import Pipeline, privacy_plan
from distildp.pipeline.privacy_plan import private_train_config
from distildp.pipeline.private_models import private_model
from distildp.pipeline.public_models import pretrained
from distildp.pipeline.settings import Settings, make_settings
from distildp.pipeline.synthetic_stage import synthetic

EPSILON = 4.0


@pytest.fixture(scope="module")
def pipe(smoke_store):
    return Pipeline(make_settings("smoke"), ArtifactStore(smoke_store), progress=False)


@pytest.fixture(scope="module")
def rows(pipe):
    return {m: pipe.run(m, EPSILON, seed=0) for m in METHODS} | {r: pipe.run(r, 0.0, seed=0) for r in REFERENCES}


def _pld_epsilon(mechanisms, delta):
    """Independent reference: dp_accounting's PLD accountant over the same releases."""
    accountant = pld.PLDAccountant(value_discretization_interval=1e-3)
    for m in mechanisms:
        if isinstance(m, privacy.GaussianMechanism):
            accountant.compose(dp_event.GaussianDpEvent(m.noise_multiplier), m.count)
        else:
            event = dp_event.PoissonSampledDpEvent(m.sample_rate, dp_event.GaussianDpEvent(m.noise_multiplier))
            accountant.compose(event, m.steps)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_spends_exactly_its_budget(pipe, rows, method):
    row = rows[method]
    assert row["private"] and row["epsilon"] == EPSILON
    assert row["delta"] < 1 / len(pipe.corpus.texts("train"))
    plan = pipe.plan(method, EPSILON)
    reference = _pld_epsilon(list(plan.mechanisms.values()), row["delta"])
    # never reports less than spent, and the budget is used (not wasted on loose bounds)
    assert reference <= row["epsilon_spent"] <= EPSILON + 0.01
    assert row["epsilon_spent"] > 0.95 * EPSILON


def test_rows_have_the_design_columns(rows):
    design = set(
        "dataset method epsilon delta seed student_ppl teacher_ppl floor accountant noise_multiplier sample_rate "
        "steps synthetic_size wall_time_s".split()
    )
    for row in rows.values():
        assert design <= set(row)
    assert rows["distildp"]["synthetic_size"] == make_settings("smoke").synthetic_size
    assert rows["distildp"]["noise_multiplier"] > 0 and 0 < rows["dpsgd"]["sample_rate"] < 1


def test_rows_carry_the_floor_of_their_view(pipe, rows):
    """Every row's floors are the test split's, for plain text and with codes given. (The smoke models are tens of
    times above them; test_evaluate checks the floor where a trained model comes within a few percent of it.)"""
    student_floor, teacher_floor = pipe.floor("student"), pipe.floor("teacher")
    assert teacher_floor < student_floor  # codes carry information
    for name, row in rows.items():
        assert row["floor"] == pytest.approx(student_floor), name
        if not math.isnan(row["student_ppl"]):
            assert row["student_ppl"] > row["floor"], name
        if not math.isnan(row["teacher_ppl"]):
            assert row["teacher_floor"] == pytest.approx(teacher_floor) and row["teacher_ppl"] > teacher_floor, name


def test_distildp_and_synthetic_only_share_teacher_and_synthetic_set(pipe, rows):
    assert rows["distildp"]["teacher_ppl"] == rows["synthetic_only"]["teacher_ppl"]
    assert rows["distildp"]["student_ppl"] != rows["synthetic_only"]["student_ppl"]
    assert rows["synthetic_only"]["student_ppl"] != rows["pretrained_student"]["student_ppl"]  # it trained
    teacher = private_model(pipe, "teacher", 0, pipe.plan("distildp", EPSILON))
    synthetic = [a for a in pipe.store.list("synthetic") if a.manifest["inputs"]["teacher"]["key"] == teacher.key]
    assert len(synthetic) == 1  # built once, reused
    record = synthetic[0].privacy
    assert record["private"] and record["release"] == "DP histogram"


def test_manifests_record_privacy(pipe, rows):
    for art in pipe.store.list("private_teacher"):
        rec = art.privacy
        if rec["private"]:
            for key in ("epsilon", "delta", "accountant", "noise_multiplier", "sample_rate", "steps", "max_grad_norm"):
                assert rec[key] is not None, key
            assert json.loads((art.path / "manifest.json").read_text())["privacy"]["steps"] == rec["steps"]
    for art in pipe.store.list("distilled_student"):
        assert "held-out synthetic" in art.privacy["model_selection"]


def test_manifests_record_the_device_but_keys_ignore_it(pipe, rows):
    trained = [
        a
        for stage in ("pretrained", "private_teacher", "synthetic", "distilled_student")
        for a in pipe.store.list(stage)
    ]
    assert trained and all(a.manifest["extra"]["device"] == str(pipe.device) for a in trained)
    elsewhere = Pipeline(make_settings("smoke", {"device": "cpu"}), pipe.store, progress=False)
    assert elsewhere.plan("dpkd", EPSILON).noise_multipliers() == pipe.plan("dpkd", EPSILON).noise_multipliers()
    before = {a.path for a in pipe.store.list()}
    assert elsewhere.run("dpkd", EPSILON, seed=0)["student_ppl"] == rows["dpkd"]["student_ppl"]
    assert {a.path for a in pipe.store.list()} == before  # same artifacts: the device is not in any key


def test_second_run_reuses_every_stage(pipe, rows):
    before = {a.path for a in pipe.store.list()}
    again = pipe.run("dpkd", EPSILON, seed=0)
    assert {a.path for a in pipe.store.list()} == before
    assert again["student_ppl"] == rows["dpkd"]["student_ppl"]


def test_non_private_row_is_labelled(pipe):
    row = pipe.run("dpsgd", math.inf, seed=0)
    assert not row["private"] and math.isinf(row["epsilon_spent"])


def test_exact_histogram_is_flagged_not_private(tmp_path):
    settings = make_settings("smoke", {"histogram": "exact"})
    pipe = Pipeline(settings, ArtifactStore(tmp_path), progress=False)
    teacher = private_model(pipe, "teacher", 0, pipe.plan("distildp", EPSILON))
    synthetic_set = synthetic(pipe, teacher, 0, pipe.plan("distildp", EPSILON))
    assert synthetic_set.privacy["private"] is False and synthetic_set.privacy["leak"]


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"histogram_share": 1.5}, "histogram_share"),
        ({"histogram": "noisy"}, "histogram"),
        ({"lam": 2.0}, "lam"),
        ({"temperature": 0.0}, "temperature"),
        ({"privat_train": {}}, "unknown setting"),
        ({"teacher_train": {"epoch": 1}}, "unknown field"),
    ],
)
def test_bad_settings_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        make_settings("smoke", bad)


def test_settings_give_the_privacy_config_and_the_kd_loss_their_fields():
    s = make_settings("smoke", {"max_grad_norm": 0.5, "accountant": "rdp", "dp_randomness": "secret", "delta": "paper"})
    private = s.privacy_config(1.3, 4.0, 1e-3)
    assert (private.target_epsilon, private.delta, private.noise_multiplier) == (4.0, 1e-3, 1.3)
    assert (private.max_grad_norm, private.accountant, private.grad_sample_mode) == (0.5, "rdp", s.grad_sample_mode)
    assert private.private and private.secret_randomness and private.allow_delta_one_over_n
    plain = s.privacy_config(None, 4.0, 1e-3)
    assert not plain.private and plain.delta is None and math.isinf(plain.target_epsilon)
    kd = make_settings("smoke", {"lam": 0.7, "temperature": 3.0, "kd_weighting": "paper_sum"}).kd_config()
    assert asdict(kd) == {
        "lam": 0.7,
        "temperature": 3.0,
        "alpha": 0.0,
        "teacher_context": s.teacher_context,
        "weighting": "paper_sum",
    }
    assert isinstance(kd, KDConfig)  # passed to make_kd_loss_fn whole
    assert "KDConfig" in str(inspect.signature(make_kd_loss_fn).parameters["kd"].annotation)


def test_bad_method_and_epsilon(pipe):
    with pytest.raises(ValueError, match="unknown method"):
        pipe.plan("distill", EPSILON)
    with pytest.raises(ValueError, match="epsilon"):
        pipe.run("dpsgd", -1.0)
    with pytest.raises(ValueError, match="profile"):
        make_settings("tiny")


def test_embedded_default_noise_per_step_is_within_a_few_times_the_papers(tmp_path):
    """sigma / batch at epsilon = 2 (the noise on each averaged gradient coordinate, per unit of clipping norm):
    the paper's is about 5e-4; the embedded default stays within 4x of it."""
    settings = make_settings("quick")
    assert settings.dataset == "builtin" and Settings().dp_randomness == "secret"
    pipe = Pipeline(settings, ArtifactStore(tmp_path), progress=False)
    for method, part in (("dpsgd", "student"), ("distildp", "teacher")):
        sigma = pipe.plan(method, 2.0).noise_multipliers()[part]
        batch = private_train_config(pipe.settings, part).batch_size
        assert 5e-4 < sigma / batch <= 4 * 5e-4, (method, sigma, batch)


def test_secret_dp_randomness_draws_new_noise_and_rows_say_which(tmp_path, smoke_store):
    secret = [
        Pipeline(
            make_settings("smoke", {"dp_randomness": "secret"}), ArtifactStore(tmp_path / str(i)), progress=False
        ).run("dpsgd", 2.0, seed=0)
        for i in range(2)
    ]
    assert secret[0]["dp_randomness"] == "secret" and secret[0]["student_ppl"] != secret[1]["student_ppl"]
    reproducible = Pipeline(make_settings("smoke"), ArtifactStore(smoke_store), progress=False).run("dpsgd", 2.0, 0)
    assert reproducible["dp_randomness"] == "reproducible"
    art = Pipeline(
        make_settings("smoke", {"dp_randomness": "secret"}), ArtifactStore(tmp_path / "0"), progress=False
    ).artifacts("dpsgd", 2.0, 0)["student"]
    assert art.privacy["randomness"].startswith("secret") and art.manifest["config"]["dp_randomness"] == "secret"


class KeyRecorder(ArtifactStore):
    """A view of a store that records the key of every stage asked for and builds nothing new."""

    def __init__(self, root):
        super().__init__(root)
        self.asked: list[tuple[str, str]] = []

    def build(self, stage, config, builder, inputs=None, seed=None, collective=False):
        key = config_hash(stage, config, inputs)
        self.asked.append((stage, key))
        return self.find(stage, config, inputs) or SimpleNamespace(stage=stage, key=key, path=self.path_for(stage, key))


def test_keys_follow_the_preset_and_the_corpus_generator(pipe, rows, monkeypatch):
    """A store built before a preset or the built-in corpus generator changed must not be reused as current."""

    def keys(corpus_info=None, **presets):
        for name, fields in presets.items():
            monkeypatch.setitem(PRESETS, name, {**PRESETS[name], **fields})
        view = Pipeline(pipe.settings, KeyRecorder(pipe.store.root), progress=False)
        if corpus_info:
            view.__dict__["corpus"] = replace(pipe.corpus, info={**pipe.corpus.info, **corpus_info})
        pretrained(view, "teacher")
        private_model(view, "teacher", 0)
        return dict(view.store.asked)

    current = keys()
    assert current["pretrained"] == pretrained(pipe, "teacher").key  # the recorder computes the real keys
    assert current["private_teacher"] == private_model(pipe, "teacher", 0).key
    regenerated = keys(corpus_info={"source_fingerprint": "0" * 16})
    assert regenerated["private_teacher"] != current["private_teacher"]
    assert regenerated["pretrained"] == current["pretrained"]  # public text: its own fingerprint
    deeper = keys(**{"tiny-teacher": {"n_layer": PRESETS["tiny-teacher"]["n_layer"] + 1}})
    assert deeper["pretrained"] != current["pretrained"] and deeper["private_teacher"] != current["private_teacher"]


def test_a_student_reference_row_builds_only_the_student(tmp_path):
    """The teacher floor needs the tokenizer, not the teacher: grid points pretraining the two run side by side."""
    pipe = Pipeline(make_settings("smoke"), ArtifactStore(tmp_path), progress=False)
    row = pipe.run("pretrained_student", 0.0)
    assert [a.manifest["config"]["model"] for a in pipe.store.list("pretrained")] == ["tiny-student"]
    assert 1 < row["teacher_floor"] < row["floor"] < row["student_ppl"]


@pytest.mark.parametrize("tolerance, stops_at", [(0.0, None), (None, None), (0.01, 3)])
def test_held_out_selection_stops_only_with_a_positive_tolerance(tolerance, stops_at):
    """tolerance 0 (distillation's default, as the paper: every epoch runs, the best is kept) never stops
    training, not even after an epoch that got worse; a positive tolerance stops at the first flat check."""
    from distildp.lm.evaluate import BestOnHeldOut

    improvements = iter([math.inf, 0.05, -0.02, 0.03])  # the third check is worse than the best

    class Scripted(BestOnHeldOut):
        def _check(self, step):
            return next(improvements)

    selector = Scripted(torch.nn.Linear(1, 1), tok=None, texts=[], every=1, tolerance=tolerance)
    stopped = [step for step in range(1, 5) if selector(step, loss=0.0)]
    assert (stopped[:1] or [None])[0] == stops_at


# ---------------------------------------------------------------------------------------------- DP-OPD's teachers
def test_dpopd_with_a_dp_teacher_is_composed_exactly_as_dpkd(pipe):
    """Same teacher share and student recipe as DPKD (the smoke profile's): the same releases, the same noise."""
    s = pipe.settings
    assert s.opd_teacher == "dp" and s.opd_teacher_share == s.dpkd_teacher_share and s.opd_train == s.dpkd_train
    opd, dpkd = pipe.plan("dpopd", EPSILON), pipe.plan("dpkd", EPSILON)
    assert privacy_plan.budget_parts(pipe, "dpopd") == privacy_plan.budget_parts(pipe, "dpkd")
    assert opd.noise_multipliers() == dpkd.noise_multipliers() and opd.epsilon == dpkd.epsilon


def test_dpopd_rows_say_what_their_epsilon_covers_for_each_teacher(pipe, rows):
    assert rows["dpopd"]["opd_teacher"] == "dp" and rows["dpopd"]["epsilon_covers"] == COVERS_ALL
    public = Pipeline(replace(pipe.settings, opd_teacher="public"), pipe.store, progress=False)
    nonprivate = Pipeline(replace(pipe.settings, opd_teacher="nonprivate"), pipe.store, progress=False)
    public_row, nonprivate_row = public.run("dpopd", EPSILON), nonprivate.run("dpopd", EPSILON)

    # public: the pretrained teacher, and the student's DP-SGD is the only release
    assert public.artifacts("dpopd", EPSILON)["teacher"].key == pretrained(pipe, "teacher").key
    assert list(public.plan("dpopd", EPSILON).mechanisms) == ["student"]
    assert public_row["private"] and public_row["epsilon_covers"] == COVERS_ALL
    assert public_row["epsilon_spent"] <= EPSILON + 0.01

    # nonprivate: the non-private reference teacher; the student's epsilon is accounted, the whole is not DP
    arts = nonprivate.artifacts("dpopd", EPSILON)
    assert arts["teacher"].key == private_model(pipe, "teacher", 0).key
    assert arts["student"].privacy["leak"] and not arts["student"].privacy["private"]
    assert arts["student"].privacy["epsilon"] <= EPSILON + 0.01  # what the student's own DP-SGD spent
    assert not nonprivate_row["private"] and nonprivate_row["epsilon_spent"] == math.inf
    assert nonprivate_row["epsilon_covers"] == COVERS_STUDENT_ONLY and nonprivate_row["noise_multiplier"] > 0
    assert len({public_row["student_ppl"], nonprivate_row["student_ppl"], rows["dpopd"]["student_ppl"]}) == 3
