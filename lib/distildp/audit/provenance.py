"""Which private data a pipeline model was trained on, rebuilt from the artifact manifests (the audit's ground
truth: its members, non-members and canaries; see `distildp.audit.exposure` for how the audit fits together).

A private_teacher or private_student (DP-SGD, DPKD's student, or non-private) records its private data in its
config ('data': dataset, options, the built-in source's fingerprint); so do a synthetic set and DP-OPD's
on_policy_student (trained on the private documents' prompts); a distilled_student derives from its teacher's data
through its 'teacher' input. The corpus is loaded again from
that record and checked against the recorded fingerprint; anything that cannot be rebuilt is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from distildp.core.manifests import MANIFEST, CorruptArtifactError, read_artifact
from distildp.data.loaders import load_corpus
from distildp.distill.synthetic_store import load_synthetic

# Stages trained directly on the private training split, and stages whose private data is their teacher's.
PRIVATE_STAGES = ("private_teacher", "private_student", "on_policy_student", "synthetic")
DERIVED_STAGES = ("distilled_student",)
# what a model of each stage was trained on, as the audit's rows say it (a synthetic set's row: the text itself)
TRAINED_ON = {
    "private_teacher": "private text",
    "private_student": "private text",
    "on_policy_student": "private prompts, its own continuations scored by its teacher",
    "synthetic": "synthetic text",
    "distilled_student": "synthetic text",
}


class AuditError(ValueError):
    """The audit cannot be run as asked (the message says why and what to do)."""


@dataclass
class TrainingSet:
    """The private documents behind a pipeline model, rebuilt from manifests. `members` are the private training
    documents (canaries inserted), `nonmembers` the held-out splits (disjoint from train); the prefixes are
    their control codes (context for a teacher, unused by a student)."""

    artifact: Path
    stage: str  # the audited artifact's stage
    data: dict
    members: list[str]
    member_prefixes: list[str]
    nonmembers: list[str]
    nonmember_prefixes: list[str]
    canaries: list[dict]
    chain: list[str] = field(default_factory=list)  # '<stage>/<key>' from the audited artifact to the private one
    notes: list[str] = field(default_factory=list)
    # each chain artifact's manifest privacy record. Not the bound to audit against: a distilled student's says
    # epsilon = inf (post-processing); the method's total is Pipeline.plan(method, epsilon).epsilon
    privacy: dict[str, dict] = field(default_factory=dict)

    @property
    def direct(self) -> bool:
        """True when the audited model was trained on the members themselves (not only on text derived from them);
        DP-OPD's student read their prompts (its first tokens) and nothing else of them."""
        return self.stage in ("private_teacher", "private_student", "on_policy_student")

    @property
    def trained_on(self) -> str:
        return TRAINED_ON[self.stage]


def training_set(
    artifact_dir: str | Path, verify: str | None = None, nonmember_splits: tuple[str, ...] = ("validation", "test")
) -> TrainingSet:
    """Rebuild the private training and held-out documents of a pipeline artifact from its manifest: a
    private_teacher, private_student (DP-SGD, DPKD or non-private) or on_policy_student directly, a synthetic set or a
    distilled_student through the teacher it came from. Refuses, with the reason, an artifact without a
    manifest, one trained on public data only, and one whose data cannot be rebuilt as it was.

    nonmember_splits: the held-out splits that make the non-members. Both by default: no model trains on either
    (validation only chooses learning rates), and the more non-members, the lower the FPR an attack can resolve
    (1 / their number)."""
    path = Path(artifact_dir)
    audited = _read(path, verify, audited=path)
    art, privacy = _private_artifact(audited, path, verify)
    data = _recorded_data(art, path)
    corpus, notes = _rebuilt_corpus(data, path)
    if "train" in nonmember_splits or not nonmember_splits:
        raise AuditError(
            f"nonmember_splits={nonmember_splits}: name held-out splits ('validation', 'test'), never 'train'"
        )
    try:
        nonmembers = [t for split in nonmember_splits for t in corpus.texts(split)]
        nonmember_prefixes = [p for split in nonmember_splits for p in corpus.prefixes(split)]
    except KeyError as err:
        raise AuditError(f"nonmember_splits={nonmember_splits}: {err.args[0]}") from err
    return TrainingSet(
        path,
        audited.stage,
        data,
        corpus.texts("train"),
        corpus.prefixes("train"),
        nonmembers,
        nonmember_prefixes,
        list(corpus.canaries),
        list(privacy),
        notes,
        privacy,
    )


def _private_artifact(art, path: Path, verify: str | None):
    """The artifact trained on the private data behind `art` (itself, or the teacher a derived one came from) and
    every chain artifact's privacy record ('<stage>/<key>' -> record, from `art` on)."""
    privacy = {f"{art.stage}/{art.key}": art.privacy}
    while art.stage in DERIVED_STAGES:
        teacher = art.manifest["inputs"].get("teacher")
        if not teacher:
            raise AuditError(
                f"{art.path / MANIFEST} lists no 'teacher' input: cannot tell which private data {path} derives from"
            )
        art = _read(art.path.parent.parent / teacher["stage"] / teacher["key"], verify, audited=path)
        privacy[f"{art.stage}/{art.key}"] = art.privacy
    if art.stage not in PRIVATE_STAGES:
        raise AuditError(
            f"{path} is a {art.stage!r} artifact: it was not trained on private data (or its "
            f"manifest does not say which), so there is no private training set to audit. Audit a "
            f"{' or '.join(PRIVATE_STAGES + DERIVED_STAGES)} artifact"
        )
    return art, privacy


def _recorded_data(art, path: Path) -> dict:
    """The private data config the artifact's manifest records ('data': dataset, options, fingerprint)."""
    data = art.manifest["config"].get("data")
    if not isinstance(data, dict) or "dataset" not in data:
        raise AuditError(
            f"{art.path / MANIFEST} records no private data config ('data' with 'dataset' and "
            f"'options'): the training set of {path} cannot be rebuilt; rebuild the artifact with the "
            f"current pipeline"
        )
    return data


def _rebuilt_corpus(data: dict, path: Path):
    """The corpus loaded again as `data` records it, refused unless its source fingerprint is the recorded one;
    with the notes on what the manifest cannot confirm."""
    try:
        corpus = load_corpus(data["dataset"], **(data.get("options") or {}))
    except Exception as err:  # noqa: BLE001 - any failure means the data is not there as it was
        raise AuditError(
            f"cannot rebuild the training set of {path}: dataset {data['dataset']!r} with options "
            f"{data.get('options')} does not load ({type(err).__name__}: {err}); make that dataset "
            f"available as it was when the model was built"
        ) from err
    notes = []
    recorded, rebuilt = data.get("source_fingerprint"), corpus.info.get("source_fingerprint")
    if recorded != rebuilt:
        raise AuditError(
            f"cannot rebuild the training set of {path}: its manifest records data source "
            f"fingerprint {recorded!r}, but loading {data['dataset']!r} now gives {rebuilt!r}: the "
            f"corpus generator changed since the build. Audit a model rebuilt with this version, or "
            f"check out the version it was built with"
        )
    if recorded is None:
        notes.append(
            f"dataset {data['dataset']!r} has no source fingerprint: the rebuilt training set is the "
            f"one its files give now, which the manifest cannot confirm"
        )
    return corpus, notes


def synthetic_texts(artifact_dir: str | Path, verify: str | None = None) -> list[str]:
    """The synthetic text of a synthetic artifact, or the one a distilled_student was trained on."""
    path = Path(artifact_dir)
    art = _read(path, verify, audited=path)
    if art.stage == "distilled_student":
        ref = art.manifest["inputs"].get("synthetic")
        if not ref:
            raise AuditError(f"{art.path / MANIFEST} lists no 'synthetic' input")
        art = _read(art.path.parent.parent / ref["stage"] / ref["key"], verify, audited=path)
    if art.stage != "synthetic":
        raise AuditError(
            f"{path} is a {art.stage!r} artifact, which has no synthetic text; pass a synthetic or "
            f"distilled_student artifact"
        )
    return load_synthetic(art.path / "data")["text"].tolist()


def _read(path: Path, verify: str | None, audited: Path):
    if not (path / MANIFEST).is_file():
        why = "it does not exist" if not path.exists() else f"it has no {MANIFEST}"
        raise AuditError(
            f"cannot audit {audited}: {path} is not a finished pipeline artifact ({why}). The audit "
            f"needs a model built by the pipeline's artifact store (<store>/<stage>/<key>/), whose "
            f"manifest records the data it was trained on; a model saved by hand cannot be matched to "
            f"its training set"
        )
    try:
        return read_artifact(path, verify=verify)
    except CorruptArtifactError as err:
        raise AuditError(f"cannot audit {audited}: {err}") from err
