"""What an artifact's `manifest.json` records and how it is checked: the key (`config_hash`), canonical JSON
(`jsonable`, `write_json_atomic`), the libraries and machine it was built with, and its files' sizes and hashes
(`read_artifact` checks them; a mismatch raises CorruptArtifactError). The store itself: `distildp.core.artifacts`.

Integrity: the manifest records every file's size (`files`) and sha256 (`sha256`; for files over
`FULL_HASH_LIMIT` also `sha256_head_tail`, a hash of their first and last `HEAD_TAIL_BYTES`). Reading an
artifact checks them, at the level `verify` asks (parameter, else `$DISTILDP_VERIFY`):
- "quick" (default): sizes of all files, the full sha256 of files up to FULL_HASH_LIMIT (64 MiB: every
  file of the tiny models, tokenizers and synthetic sets; well under a second each), and the head-and-tail
  hash of bigger files (hub weights): cheap, but damage in the middle of a big file goes unseen;
- "full": the full sha256 of every file (seconds per GiB). Tests use it.
A mismatch counts as a corrupt artifact: it is set aside and rebuilt, with a warning naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

MANIFEST = "manifest.json"
REQUIRED_KEYS = ("stage", "key", "config", "inputs", "files", "versions", "wall_time_s")
VERIFY_ENV = "DISTILDP_VERIFY"
VERIFY_LEVELS = ("quick", "full")
FULL_HASH_LIMIT = 64 << 20  # bytes: quick verification hashes files up to this size in full
HEAD_TAIL_BYTES = 1 << 20  # bytes hashed at each end of a bigger file by quick verification


class CorruptArtifactError(RuntimeError):
    """An artifact directory exists but cannot be trusted (see the message for why)."""


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
    raise TypeError(
        f"{value!r} ({type(value).__name__}) cannot go into an artifact config or manifest; "
        "use numbers, strings, lists and dicts"
    )


def config_hash(stage: str, config: Mapping[str, Any], inputs: Mapping[str, "Artifact"] | None = None) -> str:
    """A short, stable hash of a stage's name, config and its inputs' keys."""
    payload = {
        "stage": stage,
        "config": jsonable(dict(config)),
        "inputs": {name: art.key for name, art in sorted((inputs or {}).items())},
    }
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


def machine_info() -> dict:
    """Where an artifact was built: what decides a trained model's last bits. Not part of its key: on another
    CPU or thread count a model agrees with this one to a tolerance, not bit for bit (docs/results.md, "What is
    reproducible")."""
    import torch

    flags: set[str] = set()
    model = platform.processor() or None
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.partition(":")[::2] for line in f if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        flags = set((info.get("flags") or info.get("Features") or "").split())
        model = info.get("model name") or model
    except OSError:
        pass  # not Linux: the architecture alone
    return {
        "machine": platform.machine(),
        "processor": model,
        "torch_threads": torch.get_num_threads(),
        "cpu_features": sorted(
            flags & {"avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "amx_tile", "asimd", "sve"}
        ),
    }


def file_table(directory: Path) -> dict[str, int]:
    """Relative path -> size in bytes, for every file except the manifest."""
    return {
        str(p.relative_to(directory)): p.stat().st_size
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_head_tail(path: Path) -> str:
    """sha256 of a file's first and last HEAD_TAIL_BYTES (the size is checked separately)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(HEAD_TAIL_BYTES))
        size = f.seek(0, os.SEEK_END)
        f.seek(max(size - HEAD_TAIL_BYTES, 0))
        digest.update(f.read(HEAD_TAIL_BYTES))
    return digest.hexdigest()


def hash_tables(directory: Path, sizes: Mapping[str, int]) -> dict[str, dict[str, str]]:
    """The manifest's `sha256` of every file and `sha256_head_tail` of those quick verification won't hash in full."""
    return {
        "sha256": {name: _sha256(directory / name) for name in sizes},
        "sha256_head_tail": {
            name: _sha256_head_tail(directory / name) for name, size in sizes.items() if size > FULL_HASH_LIMIT
        },
    }


def verify_level(verify: str | None = None) -> str:
    """`verify` if given, else `$DISTILDP_VERIFY`, else "quick"; anything but quick or full is an error."""
    level = verify or os.environ.get(VERIFY_ENV) or "quick"
    if level not in VERIFY_LEVELS:
        source = "verify" if verify else f"${VERIFY_ENV}"
        raise ValueError(
            f"{source}={level!r} is not a verification level; use one of {list(VERIFY_LEVELS)} "
            f"(quick: sizes and hashes of files up to {FULL_HASH_LIMIT >> 20} MiB; full: every byte)"
        )
    return level


def check_hashes(path: Path, manifest: dict, level: str) -> None:
    """Raise CorruptArtifactError naming the first file whose content differs from the manifest's hash."""
    if "sha256" not in manifest:
        # Built before the store recorded hashes: trusted on the size check alone, as it was then, rather
        # than rebuilt (that could mean retraining a model, or spending privacy budget again).
        return
    hashes, head_tail = manifest["sha256"], manifest.get("sha256_head_tail") or {}
    if not isinstance(hashes, dict) or set(hashes) != set(manifest["files"]):
        raise CorruptArtifactError(f"{path / MANIFEST}: its sha256 table does not list the same files as 'files'")
    for name, expected in sorted(hashes.items()):
        if level == "quick" and name in head_tail and manifest["files"][name] > FULL_HASH_LIMIT:
            actual, expected, what = _sha256_head_tail(path / name), head_tail[name], "first or last bytes"
        else:
            actual, what = _sha256(path / name), "content"
        if actual != expected:
            raise CorruptArtifactError(
                f"{path / name}: its {what} changed since the build (sha256 differs from the manifest's)"
            )


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


def read_artifact(path: Path, expected_key: str | None = None, verify: str | None = None) -> Artifact:
    """Load and check an artifact directory; raise CorruptArtifactError naming what is wrong.

    verify: "quick" or "full" (see the module's docstring); None: `$DISTILDP_VERIFY`, else quick.
    """
    level = verify_level(verify)
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
    actual = file_table(Path(path))
    if actual != manifest["files"]:
        changed = sorted(set(actual.items()) ^ set(manifest["files"].items()))
        raise CorruptArtifactError(f"{path}: files differ from the manifest ({changed[:5]})")
    check_hashes(Path(path), manifest, level)
    return Artifact(Path(path), manifest)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON so a reader sees the old file or the new one, never half of one: a temporary file beside it
    (named `.<name>.tmp-*`, which a writer that finds one left by a killed process may delete), then a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(jsonable(data), indent=2, sort_keys=True))
    os.replace(tmp, path)
