"""The artifact store's content hashes (a changed byte means a rebuild) and its error when it cannot be written."""

import hashlib
import json
import os
import re
import warnings
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import distildp.core.manifests as manifests
from distildp.core.artifacts import ArtifactStore, StoreNotWritableError
from distildp.core.manifests import MANIFEST, CorruptArtifactError, config_hash, read_artifact

CONFIG = {"epsilon": 2.0, "seed": 0}
FILES = ["model.safetensors", "tokenizer.json", "data/chunk-00000.parquet", "data/samples.jsonl"]


@pytest.fixture(autouse=True)
def _full_verification(monkeypatch):
    monkeypatch.setenv("DISTILDP_VERIFY", "full")


def build_stage(directory):
    """An artifact like the pipeline's: weights, a tokenizer, a synthetic set as parquet and jsonl."""
    (directory / "model.safetensors").write_bytes(bytes(range(256)) * 256)  # 64 KiB of "weights"
    (directory / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"good": 0, "food": 1}}}))
    (directory / "data").mkdir()
    pq.write_table(pa.table({"text": ["good food", "slow service"]}), directory / "data" / "chunk-00000.parquet")
    (directory / "data" / "samples.jsonl").write_text('{"text": "good food"}\n{"text": "slow service"}\n')
    return {"metrics": {"n": 2}}


def counting(calls):
    def builder(directory):
        calls.append(directory)
        return build_stage(directory)

    return builder


def flip_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0x01
    path.write_bytes(data)  # same size: only a content hash can tell


def test_keys_are_unchanged():
    """Hashes went into the manifest, not into the key: stores built before them keep their keys."""
    assert config_hash("teacher", CONFIG) == "b3e06dafe70f5f3b"
    teacher = SimpleNamespace(key="0123456789abcdef")
    synthetic = config_hash("synthetic", {"size": 17, "generation": {"top_k": 50}}, {"teacher": teacher})
    assert synthetic == "ee89eba9f85c1bd9"


def test_untouched_artifact_is_reused_and_its_manifest_holds_every_hash(tmp_path):
    store, calls = ArtifactStore(tmp_path), []
    art = store.build("teacher", CONFIG, counting(calls))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = store.build("teacher", CONFIG, counting(calls))
    assert len(calls) == 1 and again.path == art.path
    assert sorted(art.manifest["sha256"]) == sorted(FILES) == sorted(art.manifest["files"])
    for name, digest in art.manifest["sha256"].items():
        assert hashlib.sha256((art.path / name).read_bytes()).hexdigest() == digest
    assert art.manifest["sha256_head_tail"] == {}  # every file is small enough to hash in full


@pytest.mark.parametrize("name", FILES)
def test_flipped_byte_is_detected_set_aside_and_rebuilt(tmp_path, name):
    store, calls = ArtifactStore(tmp_path), []
    art = store.build("teacher", CONFIG, counting(calls))
    original = (art.path / name).read_bytes()
    flip_byte(art.path / name)
    with pytest.raises(CorruptArtifactError, match=re.escape(name)):
        read_artifact(art.path, art.key)
    assert store.find("teacher", CONFIG) is None
    with pytest.warns(UserWarning, match=f"corrupt artifact: .*{re.escape(name)}"):
        rebuilt = store.build("teacher", CONFIG, counting(calls))
    assert len(calls) == 2 and rebuilt.path == art.path
    assert (rebuilt.path / name).read_bytes() == original
    set_aside = list((tmp_path / ".corrupt").iterdir())
    assert len(set_aside) == 1 and (set_aside[0] / name).read_bytes() != original  # kept for inspection


def test_manifest_of_an_older_store_without_hashes_is_still_used(tmp_path):
    """Built before hashes were recorded: reused on the size check (no rebuild), which still catches truncation."""
    store, calls = ArtifactStore(tmp_path), []
    art = store.build("teacher", CONFIG, counting(calls))
    manifest = json.loads((art.path / MANIFEST).read_text())
    del manifest["sha256"], manifest["sha256_head_tail"]
    (art.path / MANIFEST).write_text(json.dumps(manifest))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.build("teacher", CONFIG, counting(calls)).key == art.key
    assert len(calls) == 1
    (art.path / "tokenizer.json").write_text("{}")
    with pytest.warns(UserWarning, match="corrupt artifact"):
        store.build("teacher", CONFIG, counting(calls))
    assert len(calls) == 2


def test_hash_table_must_list_the_same_files(tmp_path):
    art = ArtifactStore(tmp_path).build("teacher", CONFIG, build_stage)
    manifest = json.loads((art.path / MANIFEST).read_text())
    del manifest["sha256"]["tokenizer.json"]
    (art.path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CorruptArtifactError, match="sha256 table"):
        read_artifact(art.path, art.key)


def test_quick_verification_hashes_the_ends_of_big_files(tmp_path, monkeypatch):
    """Quick mode (the default outside tests) hashes big files only at their ends; full mode sees every byte."""
    monkeypatch.setattr(manifests, "FULL_HASH_LIMIT", 4096)
    monkeypatch.setattr(manifests, "HEAD_TAIL_BYTES", 1024)
    art = ArtifactStore(tmp_path).build("teacher", CONFIG, build_stage)
    assert list(art.manifest["sha256_head_tail"]) == ["model.safetensors"]  # the only file over 4096 bytes
    weights = art.path / "model.safetensors"
    flip_byte(weights)  # in the middle: the price of quick mode
    assert read_artifact(art.path, art.key, verify="quick").key == art.key
    with pytest.raises(CorruptArtifactError, match="model.safetensors: its content changed"):
        read_artifact(art.path, art.key, verify="full")
    assert ArtifactStore(tmp_path, verify="full").find("teacher", CONFIG) is None
    monkeypatch.setenv("DISTILDP_VERIFY", "quick")
    assert ArtifactStore(tmp_path).find("teacher", CONFIG) is not None
    flip_byte(weights, offset=-1)  # in the last bytes
    with pytest.raises(CorruptArtifactError, match="model.safetensors: its first or last bytes changed"):
        read_artifact(art.path, art.key)
    assert ArtifactStore(tmp_path).find("teacher", CONFIG) is None


def test_unknown_verification_level_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILDP_VERIFY", "fast")
    with pytest.raises(ValueError, match=r"\$DISTILDP_VERIFY='fast' is not a verification level.*'quick', 'full'"):
        ArtifactStore(tmp_path).find("teacher", CONFIG)
    with pytest.raises(ValueError, match="verify='paranoid'"):
        ArtifactStore(tmp_path, verify="paranoid")


# ---------------------------------------------------------------------------------------------- unwritable stores


def test_store_path_that_is_a_regular_file_is_a_clear_error(tmp_path):
    path = tmp_path / "store"
    path.write_text("not a directory")
    store = ArtifactStore(path)
    with pytest.raises(StoreNotWritableError) as info:
        store.build("teacher", CONFIG, build_stage)
    message = str(info.value)
    assert f"{path} is a file, not a directory" in message and "DISTILDP_STORE" in message
    with pytest.raises(StoreNotWritableError, match="DISTILDP_STORE"):
        list(store.list())
    assert path.read_text() == "not a directory"


def test_read_only_store_is_a_clear_error_and_still_serves_what_it_holds(tmp_path):
    root = tmp_path / "store"
    store = ArtifactStore(root)
    art = store.build("teacher", CONFIG, build_stage)
    read_only = [root, root / "teacher"]
    for directory in read_only:
        directory.chmod(0o555)
    try:
        if os.access(root, os.W_OK):
            pytest.skip("chmod does not stop this user (root) from writing")

        def must_not_run(directory):
            raise AssertionError("a finished artifact is read, not rebuilt")

        assert store.build("teacher", CONFIG, must_not_run).path == art.path  # reading needs no writes
        for stage, config in [("teacher", {"epsilon": 8.0}), ("student", CONFIG)]:  # existing, new stage dir
            with pytest.raises(StoreNotWritableError) as info:
                store.build(stage, config, build_stage)
            message = str(info.value)
            assert str(root) in message and "Permission denied" in message and "DISTILDP_STORE" in message
    finally:
        for directory in read_only:
            directory.chmod(0o755)
