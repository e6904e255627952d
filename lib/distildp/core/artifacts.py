"""The artifact store: every stage's output is a directory keyed by a hash of its config and inputs.

A stage that already ran is reused, not recomputed. Two processes that want the same artifact wait on a
file lock instead of computing it twice. Writes are atomic: a stage builds into a temporary directory and
the finished directory is renamed into place with `manifest.json` written last, so a killed run leaves
no half-written artifact behind. An artifact whose manifest is missing, unreadable or inconsistent with
its files is moved aside (never deleted: it may hold something you want) and rebuilt.

Integrity (what the manifest records and how reading checks it): `distildp.core.manifests`.

Resumable work: a builder may mark a folder of its build directory with `mark_resumable`. When that build
fails or is killed, the folder is kept in `<stage>/.resume-<key>/` and handed back, at the same place in the
build directory, to the next build of the same artifact (`restored_by_store` tells the builder so: it must
check that the work fits before continuing from it). A finished artifact carries no markers. To throw kept
work away, delete `<stage>/.resume-<key>/`.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from filelock import FileLock

from distildp.core.manifests import (
    MANIFEST,
    Artifact,
    CorruptArtifactError,
    config_hash,
    file_table,
    hash_tables,
    jsonable,
    library_versions,
    machine_info,
    read_artifact,
    verify_level,
    write_json_atomic,
)

STORE_ENV = "DISTILDP_STORE"
RESUMABLE = ".resumable"  # marker file: this folder holds work a retried build may continue
_RESTORED = "restored"  # the marker's content once the store has handed the folder to a new build


class StoreNotWritableError(OSError):
    """The store's directory cannot be created or written (the message says where and how to move it)."""


def default_root() -> Path:
    """`$DISTILDP_STORE`, else `.artifacts/` at the project root (ignored by git), else ~/.cache/distildp."""
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV]).expanduser()
    project_root = Path(__file__).resolve().parents[3]
    if (project_root / "pyproject.toml").exists():
        return project_root / ".artifacts"
    return Path.home() / ".cache" / "distildp"


class ArtifactStore:
    """Directory of artifacts, `<root>/<stage>/<key>/`, built at most once each.

    verify: how reading an artifact checks its files, "quick" or "full" (see the module's docstring);
    None: `$DISTILDP_VERIFY` at each read, else quick.
    """

    def __init__(self, root: str | os.PathLike | None = None, verify: str | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.verify = verify_level(verify) if verify else None

    def path_for(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def find(
        self, stage: str, config: Mapping[str, Any], inputs: Mapping[str, Artifact] | None = None
    ) -> Artifact | None:
        """The finished artifact for this config and inputs, or None (a corrupt one counts as absent)."""
        key = config_hash(stage, config, inputs)
        try:
            return read_artifact(self.path_for(stage, key), key, self.verify)
        except CorruptArtifactError:
            return None

    def build(
        self,
        stage: str,
        config: Mapping[str, Any],
        builder: Callable[[Path], Mapping[str, Any] | None],
        inputs: Mapping[str, Artifact] | None = None,
        seed: int | None = None,
        collective: bool = False,
    ) -> Artifact:
        """Return the artifact for (stage, config, inputs), building it with `builder(tmp_dir)` if needed.

        `builder` writes its files into the directory it is given and may return a dict with any of
        `privacy`, `metrics` and `extra`, which go into the manifest. Folders it marks with
        `mark_resumable` outlive a failed or killed build (see the module's docstring).

        In a data-parallel run (`distildp.core.distributed`) every process calls this for the same stages, and rank 0
        alone writes artifacts (see `_build_together`). collective: every process runs `builder` too, which takes
        part in collectives (DP-SGD's all-reduce, sharded generation); otherwise rank 0 runs it alone while the
        others wait. Outside a process group of several processes `collective` changes nothing.
        """
        from distildp.core import distributed

        key = config_hash(stage, config, inputs)
        final = self.path_for(stage, key)
        if distributed.world_size() > 1:
            return self._build_together(stage, key, final, config, builder, inputs, seed, collective)
        if final.exists():
            try:
                return read_artifact(final, key, self.verify)
            except CorruptArtifactError:
                pass  # decided under the lock below, where no one else is writing it
        self._writable_dir(final.parent)
        with FileLock(str(final.parent / f".{key}.lock")):
            finished = self._finished(final, key)  # perhaps built by another process while we waited
            if finished is None:
                self._build_into(stage, key, final, config, builder, inputs, seed)
        return finished or read_artifact(final, key, self.verify)

    def _build_together(self, stage, key, final, config, builder, inputs, seed, collective: bool) -> Artifact:
        """A build in a data-parallel run, where rank 0 alone writes (transformers' save_pretrained, for one, writes
        nothing on other ranks once a process group runs). Rank 0 decides, under the file lock, whether the artifact
        must be built, and tells the others. A collective build then runs `builder` in every process: rank 0's in
        the temporary directory that becomes the artifact, the others' in a scratch folder beside it, deleted after
        (a builder that wants their files, like sharded generation, asks rank 0 where its folder is:
        `distildp.core.distributed.broadcast`). Otherwise rank 0 runs it alone. Once rank 0 has written the manifest and
        renamed the folder into place, or failed to, it tells the others, which then read the artifact or raise.
        A process that fails inside a collective builder leaves the others waiting in a collective: torchrun then
        stops them all, and a rerun resumes what was marked resumable."""
        from distildp.core import distributed

        if not distributed.is_main():
            must_build = distributed.broadcast(None)  # rank 0's decision
            if must_build and collective:
                scratch = final.parent / f".scratch-{key}-rank{distributed.rank()}-{uuid.uuid4().hex[:8]}"
                scratch.mkdir(parents=True)
                try:
                    builder(scratch)
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
            failure = distributed.broadcast(None) if must_build else None
            if failure:
                raise RuntimeError(f"rank 0 could not build {stage} {key}: {failure}")
            return read_artifact(final, key, self.verify)

        self._writable_dir(final.parent)
        with FileLock(str(final.parent / f".{key}.lock")):
            finished = self._finished(final, key)
            for stale in final.parent.glob(f".scratch-{key}-*"):  # left by a killed run's other ranks
                shutil.rmtree(stale, ignore_errors=True)
            must_build = distributed.broadcast(finished is None)
            if not must_build:
                return finished
            builder_done = []

            def build_then_note(tmp: Path):
                result = builder(tmp)
                builder_done.append(True)
                return result

            try:
                processes = distributed.describe() if collective else None
                self._build_into(stage, key, final, config, build_then_note, inputs, seed, processes)
            except BaseException as err:
                # the others wait for this word unless they are in a collective of the builder
                if builder_done or not collective:
                    distributed.broadcast(f"{type(err).__name__}: {err}")
                raise
            distributed.broadcast(None)
        return read_artifact(final, key, self.verify)

    def _finished(self, final: Path, key: str) -> Artifact | None:
        """The finished artifact at `final`, or None; a corrupt one is set aside (call under the lock)."""
        if not final.exists():
            return None
        try:
            return read_artifact(final, key, self.verify)
        except CorruptArtifactError as err:
            self._set_aside(final, err)
            return None

    def _build_into(self, stage, key, final, config, builder, inputs, seed, processes: dict | None = None) -> None:
        """Run `builder` in a fresh temporary directory, write the manifest, rename it to `final` (under the lock).
        `processes`: the data-parallel run that built it, recorded beside the machine."""
        resume = final.parent / f".resume-{key}"
        for stale in final.parent.glob(f".tmp-{key}-*"):  # left by a killed build of this key
            _keep_resumable(stale, resume)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        _restore_resumable(resume, tmp)
        try:
            start = time.time()
            result = dict(builder(tmp) or {})
            for marker in tmp.rglob(RESUMABLE):
                marker.unlink()  # a finished artifact has nothing to resume
            files = file_table(tmp)
            manifest = {
                "stage": stage,
                "key": key,
                "config": jsonable(dict(config)),
                "inputs": {name: {"stage": art.stage, "key": art.key} for name, art in (inputs or {}).items()},
                "seed": seed,
                "privacy": jsonable(result.pop("privacy", None)),
                "metrics": jsonable(result.pop("metrics", {})),
                "extra": jsonable(result.pop("extra", {})),
                "versions": library_versions(),
                "built_on": {**machine_info(), **(processes or {})},
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "wall_time_s": round(time.time() - start, 3),
                "files": files,
                **hash_tables(tmp, files),
            }
            if result:
                raise ValueError(
                    f"builder for {stage!r} returned unknown keys {sorted(result)}; "
                    "return only 'privacy', 'metrics' and 'extra'"
                )
            write_json_atomic(tmp / MANIFEST, manifest)
            os.replace(tmp, final)
        except BaseException:
            try:
                _keep_resumable(tmp, resume)
            except OSError:
                pass  # losing the partial work must not hide why the build failed
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _writable_dir(self, directory: Path) -> None:
        """Create `directory` and check that files can be made in it; StoreNotWritableError if not."""
        try:
            directory.mkdir(parents=True, exist_ok=True)
            probe = directory / f".write-test-{uuid.uuid4().hex[:8]}"
            probe.touch()
            probe.unlink()
        except OSError as err:
            raise self._not_writable(err) from err

    def _not_writable(self, err: OSError | None = None) -> StoreNotWritableError:
        if self.root.is_file() or err is None:
            why = f"{self.root} is a file, not a directory"
        else:
            why = f"{err.strerror or err}: {err.filename or self.root}"
        return StoreNotWritableError(
            f"cannot write to the artifact store at {self.root} ({why}). Move the store: set the {STORE_ENV} "
            f"environment variable to a writable directory (e.g. export {STORE_ENV}=$HOME/distildp-store), "
            f"or pass another root to ArtifactStore / --store."
        )

    def _set_aside(self, path: Path, reason: Exception) -> None:
        """Move a corrupt artifact to `<root>/.corrupt/` (kept for inspection), then it is rebuilt."""
        target = self.root / ".corrupt" / f"{path.parent.name}-{path.name}-{int(time.time())}"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        except OSError as err:
            raise self._not_writable(err) from err
        warnings.warn(f"corrupt artifact: {reason}; moved to {target} and rebuilding", stacklevel=3)

    def list(self, stage: str | None = None) -> Iterable[Artifact]:
        """Every finished artifact (of one stage, if given)."""
        if not self.root.exists():
            return
        if not self.root.is_dir():
            raise self._not_writable()  # a regular file where the store should be
        stage_dirs = (
            [self.root / stage]
            if stage
            else sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        )
        for stage_dir in stage_dirs:
            for path in sorted(stage_dir.glob("[!.]*")):
                try:
                    yield read_artifact(path, verify=self.verify)
                except CorruptArtifactError:
                    continue


def mark_resumable(folder: str | os.PathLike) -> None:
    """Ask the store to keep `folder`, part of a build directory, if the build fails or is killed, and to hand
    it back at the same place to the next build of the same artifact. Harmless outside a store."""
    marker = Path(folder) / RESUMABLE
    if not marker.exists():
        marker.touch()


def restored_by_store(folder: str | os.PathLike) -> bool:
    """True when `folder` is work a failed build of the same artifact left: the builder must check that it
    fits (its arguments may differ, e.g. after a secret noise draw) before continuing from it."""
    marker = Path(folder) / RESUMABLE
    return marker.is_file() and marker.read_text() == _RESTORED


def _keep_resumable(build_dir: Path, resume: Path) -> None:
    """Move the folders a builder marked resumable out of `build_dir` into `resume`, at the same relative place."""
    if not build_dir.is_dir():
        return
    for marker in sorted(build_dir.rglob(RESUMABLE), key=lambda p: len(p.parts)):
        if not marker.exists():
            continue  # moved with a marked folder above it
        target = resume / marker.parent.relative_to(build_dir)
        if target.exists():
            shutil.rmtree(target)  # an older try's work; this one continued from it
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(marker.parent, target)


def _restore_resumable(resume: Path, build_dir: Path) -> None:
    """Hand kept work to a new build (at the same relative places), marked as restored."""
    if not resume.is_dir():
        return
    for entry in resume.iterdir():
        os.replace(entry, build_dir / entry.name)
    resume.rmdir()
    for marker in build_dir.rglob(RESUMABLE):
        marker.write_text(_RESTORED)
