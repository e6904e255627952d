"""The artifact store: every stage's output is a directory keyed by a hash of its config and inputs.

A stage that already ran is reused, not recomputed. Two processes that want the same artifact wait on a
file lock instead of computing it twice. Writes are atomic: a stage builds into a temporary directory and
the finished directory is renamed into place with `manifest.json` written last, so a killed run leaves
no half-written artifact behind. An artifact whose manifest is missing, unreadable or inconsistent with
its files is moved aside (never deleted: it may hold something you want) and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from filelock import FileLock

MANIFEST = "manifest.json"
REQUIRED_KEYS = ("stage", "key", "config", "inputs", "files", "versions", "wall_time_s")
STORE_ENV = "DISTILDP_STORE"


class CorruptArtifactError(RuntimeError):
    """An artifact directory exists but cannot be trusted (see the message for why)."""


def default_root() -> Path:
    """`$DISTILDP_STORE`, else `.artifacts/` at the project root (ignored by git), else ~/.cache/distildp."""
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV]).expanduser()
    project_root = Path(__file__).resolve().parents[2]
    if (project_root / "pyproject.toml").exists():
        return project_root / ".artifacts"
    return Path.home() / ".cache" / "distildp"


def jsonable(value: Any) -> Any:
    """Canonical JSON-friendly form: infinities as strings so manifests stay standard JSON."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return jsonable(value.item())
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise TypeError(f"{value!r} ({type(value).__name__}) cannot go into an artifact config or manifest; "
                    "use numbers, strings, lists and dicts")


def config_hash(stage: str, config: Mapping[str, Any], inputs: Mapping[str, "Artifact"] | None = None) -> str:
    """A short, stable hash of a stage's name, config and its inputs' keys."""
    payload = {"stage": stage, "config": jsonable(dict(config)),
               "inputs": {name: art.key for name, art in sorted((inputs or {}).items())}}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for name in ("distildp", "torch", "transformers", "tokenizers", "opacus", "dp-accounting", "datasets"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def _file_table(directory: Path) -> dict[str, int]:
    """Relative path -> size in bytes, for every file except the manifest."""
    return {str(p.relative_to(directory)): p.stat().st_size
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST}


@dataclass(frozen=True)
class Artifact:
    """A finished stage output: its directory and its manifest."""

    path: Path
    manifest: dict = field(repr=False)

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def stage(self) -> str:
        return self.manifest["stage"]

    @property
    def privacy(self) -> dict:
        return self.manifest.get("privacy") or {}

    @property
    def metrics(self) -> dict:
        return self.manifest.get("metrics") or {}


def read_artifact(path: Path, expected_key: str | None = None) -> Artifact:
    """Load and check an artifact directory; raise CorruptArtifactError naming what is wrong."""
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.exists():
        raise CorruptArtifactError(f"{path} has no {MANIFEST}: it was never finished")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CorruptArtifactError(f"{manifest_path} is unreadable ({err})") from err
    missing = [k for k in REQUIRED_KEYS if k not in manifest] if isinstance(manifest, dict) else list(REQUIRED_KEYS)
    if missing:
        raise CorruptArtifactError(f"{manifest_path} lacks {missing}")
    if expected_key is not None and manifest["key"] != expected_key:
        raise CorruptArtifactError(f"{manifest_path} has key {manifest['key']}, expected {expected_key}")
    actual = _file_table(Path(path))
    if actual != manifest["files"]:
        changed = sorted(set(actual.items()) ^ set(manifest["files"].items()))
        raise CorruptArtifactError(f"{path}: files differ from the manifest ({changed[:5]})")
    return Artifact(Path(path), manifest)


class ArtifactStore:
    """Directory of artifacts, `<root>/<stage>/<key>/`, built at most once each."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_root()

    def path_for(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def find(self, stage: str, config: Mapping[str, Any], inputs: Mapping[str, Artifact] | None = None) -> Artifact | None:
        """The finished artifact for this config and inputs, or None (a corrupt one counts as absent)."""
        key = config_hash(stage, config, inputs)
        try:
            return read_artifact(self.path_for(stage, key), key)
        except CorruptArtifactError:
            return None

    def build(
        self,
        stage: str,
        config: Mapping[str, Any],
        builder: Callable[[Path], Mapping[str, Any] | None],
        inputs: Mapping[str, Artifact] | None = None,
        seed: int | None = None,
    ) -> Artifact:
        """Return the artifact for (stage, config, inputs), building it with `builder(tmp_dir)` if needed.

        `builder` writes its files into the directory it is given and may return a dict with any of
        `privacy`, `metrics` and `extra`, which go into the manifest.
        """
        key = config_hash(stage, config, inputs)
        final = self.path_for(stage, key)
        if final.exists():
            try:
                return read_artifact(final, key)
            except CorruptArtifactError:
                pass  # decided under the lock below, where no one else is writing it
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final.parent / f".{key}.lock")):
            if final.exists():
                try:
                    return read_artifact(final, key)  # built by another process while we waited
                except CorruptArtifactError as err:
                    self._set_aside(final, err)
            for stale in final.parent.glob(f".tmp-{key}-*"):
                shutil.rmtree(stale, ignore_errors=True)  # left by a killed build of this key
            tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            try:
                start = time.time()
                result = dict(builder(tmp) or {})
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
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "wall_time_s": round(time.time() - start, 3),
                    "files": _file_table(tmp),
                }
                if result:
                    raise ValueError(f"builder for {stage!r} returned unknown keys {sorted(result)}; "
                                     "return only 'privacy', 'metrics' and 'extra'")
                _write_json_atomic(tmp / MANIFEST, manifest)
                os.replace(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return read_artifact(final, key)

    def _set_aside(self, path: Path, reason: Exception) -> None:
        """Move a corrupt artifact to `<root>/.corrupt/` (kept for inspection), then it is rebuilt."""
        target = self.root / ".corrupt" / f"{path.parent.name}-{path.name}-{int(time.time())}"
        target.parent.mkdir(parents=True, exist_ok=True)
        warnings.warn(f"corrupt artifact: {reason}; moved to {target} and rebuilding", stacklevel=3)
        os.replace(path, target)

    def list(self, stage: str | None = None) -> Iterable[Artifact]:
        """Every finished artifact (of one stage, if given)."""
        if not self.root.exists():
            return
        stage_dirs = ([self.root / stage] if stage else
                      sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")))
        for stage_dir in stage_dirs:
            for path in sorted(stage_dir.glob("[!.]*")):
                try:
                    yield read_artifact(path)
                except CorruptArtifactError:
                    continue


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON so a reader sees the old file or the new one, never half of one."""
    _write_json_atomic(Path(path), jsonable(data))
