"""The artifact store: reuse, locking across processes, crash safety, corrupt-manifest rebuild."""

import json
import math
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from distildp.core.artifacts import RESUMABLE, ArtifactStore, mark_resumable, restored_by_store
from distildp.core.manifests import MANIFEST, CorruptArtifactError, config_hash, read_artifact


@pytest.fixture(autouse=True)
def _full_verification(monkeypatch):
    monkeypatch.setenv("DISTILDP_VERIFY", "full")


def _write_weights(directory: Path, value: str = "weights") -> dict:
    (directory / "model.bin").write_text(value)
    return {"metrics": {"ppl": 12.5}, "privacy": {"epsilon": math.inf, "private": False}}


def test_build_then_reuse(tmp_path):
    store = ArtifactStore(tmp_path)
    calls = []

    def builder(d):
        calls.append(d)
        return _write_weights(d)

    first = store.build("teacher", {"epsilon": 2.0, "seed": 0}, builder, seed=0)
    second = store.build("teacher", {"seed": 0, "epsilon": 2.0}, builder, seed=0)  # key order does not matter
    assert len(calls) == 1
    assert first.path == second.path
    assert (first.path / "model.bin").read_text() == "weights"
    manifest = first.manifest
    assert manifest["stage"] == "teacher" and manifest["seed"] == 0
    assert manifest["metrics"] == {"ppl": 12.5}
    assert manifest["privacy"]["epsilon"] == "inf"  # standard JSON, no Infinity literal
    assert manifest["files"] == {"model.bin": len("weights")}
    assert "torch" in manifest["versions"] and manifest["wall_time_s"] >= 0


def test_key_depends_on_config_and_inputs(tmp_path):
    store = ArtifactStore(tmp_path)
    a = store.build("data", {"n": 1}, _write_weights)
    b = store.build("data", {"n": 2}, _write_weights)
    assert a.key != b.key
    t1 = store.build("teacher", {"epsilon": 2.0}, _write_weights, inputs={"data": a})
    t2 = store.build("teacher", {"epsilon": 2.0}, _write_weights, inputs={"data": b})
    assert t1.key != t2.key
    assert t1.manifest["inputs"] == {"data": {"stage": "data", "key": a.key}}
    assert config_hash("teacher", {"epsilon": 2.0}, {"data": a}) == t1.key


def test_unserialisable_config_is_a_clear_error(tmp_path):
    with pytest.raises(TypeError, match="cannot go into an artifact config"):
        ArtifactStore(tmp_path).build("x", {"model": object()}, _write_weights)


def test_crash_mid_write_leaves_no_artifact(tmp_path):
    store = ArtifactStore(tmp_path)

    def crashing_builder(d):
        (d / "model.bin").write_text("half")
        raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        store.build("teacher", {"epsilon": 1.0}, crashing_builder)
    assert store.find("teacher", {"epsilon": 1.0}) is None
    assert not list((tmp_path / "teacher").glob(".tmp-*"))
    rebuilt = store.build("teacher", {"epsilon": 1.0}, _write_weights)
    assert (rebuilt.path / "model.bin").read_text() == "weights"


def test_leftover_temp_dir_of_killed_process_is_ignored_and_cleaned(tmp_path):
    store = ArtifactStore(tmp_path)
    key = config_hash("teacher", {"epsilon": 1.0})
    stale = tmp_path / "teacher" / f".tmp-{key}-deadbeef"
    stale.mkdir(parents=True)
    (stale / "model.bin").write_text("half")
    assert store.find("teacher", {"epsilon": 1.0}) is None
    store.build("teacher", {"epsilon": 1.0}, _write_weights)
    assert not stale.exists()


@pytest.mark.parametrize("damage", ["delete_manifest", "garble_manifest", "truncate_file", "drop_key"])
def test_corrupt_artifact_is_set_aside_and_rebuilt(tmp_path, damage):
    store = ArtifactStore(tmp_path)
    art = store.build("teacher", {"epsilon": 1.0}, _write_weights)
    manifest_path = art.path / MANIFEST
    if damage == "delete_manifest":
        manifest_path.unlink()
    elif damage == "garble_manifest":
        manifest_path.write_text('{"stage": "teach')
    elif damage == "truncate_file":
        (art.path / "model.bin").write_text("w")
    else:
        data = json.loads(manifest_path.read_text())
        del data["files"]
        manifest_path.write_text(json.dumps(data))
    with pytest.raises(CorruptArtifactError):
        read_artifact(art.path, art.key)
    assert store.find("teacher", {"epsilon": 1.0}) is None
    with pytest.warns(UserWarning, match="corrupt artifact"):
        rebuilt = store.build("teacher", {"epsilon": 1.0}, _write_weights)
    assert read_artifact(rebuilt.path, art.key).key == art.key
    set_aside = list((tmp_path / ".corrupt").iterdir())
    assert len(set_aside) == 1 and (set_aside[0] / "model.bin").exists()  # nothing lost


def _slow_build_in_process(root: str, log: str) -> str:
    store = ArtifactStore(root)

    def builder(d):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)
        return _write_weights(d)

    return str(store.build("teacher", {"epsilon": 3.0}, builder).path)


def test_two_processes_build_once(tmp_path):
    log = tmp_path / "builds.log"
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        paths = pool.starmap(_slow_build_in_process, [(str(tmp_path / "store"), str(log))] * 2)
    assert paths[0] == paths[1]
    assert len(log.read_text().split()) == 1, "the second process must wait on the lock, then reuse"


def test_list_skips_unfinished(tmp_path):
    store = ArtifactStore(tmp_path)
    store.build("teacher", {"epsilon": 1.0}, _write_weights)
    store.build("student", {"epsilon": 1.0}, _write_weights)
    (tmp_path / "teacher" / "notakey").mkdir()
    assert sorted(a.stage for a in store.list()) == ["student", "teacher"]
    assert [a.stage for a in store.list("teacher")] == ["teacher"]


def test_default_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILDP_STORE", str(tmp_path / "elsewhere"))
    assert ArtifactStore().root == tmp_path / "elsewhere"


def _resumable_builder(log: list, fail_after: int | None = None):
    """Writes parts 0..2 into a resumable folder, skipping those already there; raises after `fail_after` new ones."""

    def builder(d):
        work = d / "work"
        work.mkdir(exist_ok=True)
        log.append({"restored": restored_by_store(work), "found": sorted(p.name for p in work.glob("part-*"))})
        mark_resumable(work)
        (d / "scratch.bin").write_text("not resumable")
        for i in range(3):
            if not (work / f"part-{i}").exists():
                if fail_after is not None and len(list(work.glob("part-*"))) == fail_after:
                    raise KeyboardInterrupt("killed")
                (work / f"part-{i}").write_text(str(i))
        return {}

    return builder


def test_resumable_folder_survives_a_failed_build_and_is_handed_to_the_retry(tmp_path):
    store, log = ArtifactStore(tmp_path), []
    key = config_hash("synthetic", {"n": 3})
    with pytest.raises(KeyboardInterrupt):
        store.build("synthetic", {"n": 3}, _resumable_builder(log, fail_after=2))
    resume = tmp_path / "synthetic" / f".resume-{key}"
    assert sorted(p.name for p in (resume / "work").iterdir()) == [RESUMABLE, "part-0", "part-1"]
    assert not list((tmp_path / "synthetic").glob(".tmp-*")) and not (resume / "scratch.bin").exists()
    assert store.find("synthetic", {"n": 3}) is None
    art = store.build("synthetic", {"n": 3}, _resumable_builder(log))
    assert log == [{"restored": False, "found": []}, {"restored": True, "found": ["part-0", "part-1"]}]
    assert sorted(art.manifest["files"]) == ["scratch.bin", "work/part-0", "work/part-1", "work/part-2"]  # no marker
    assert not resume.exists()


def test_resumable_folder_of_a_killed_build_is_kept_the_rest_cleaned(tmp_path):
    """A killed process runs no cleanup: its temporary directory is found by the next build of the key."""
    store, log = ArtifactStore(tmp_path), []
    key = config_hash("synthetic", {"n": 3})
    stale = tmp_path / "synthetic" / f".tmp-{key}-deadbeef"
    (stale / "work").mkdir(parents=True)
    (stale / "work" / "part-0").write_text("0")
    (stale / "work" / RESUMABLE).touch()
    (stale / "half-written.bin").write_text("half")
    art = store.build("synthetic", {"n": 3}, _resumable_builder(log))
    assert log == [{"restored": True, "found": ["part-0"]}]
    assert not stale.exists() and not (art.path / "half-written.bin").exists()
    assert not list((tmp_path / "synthetic").glob(".resume-*"))


def test_manifest_records_where_it_was_built(tmp_path):
    import torch

    art = ArtifactStore(tmp_path).build("stage", {"a": 1}, lambda out: (out / "f.txt").write_text("x") and None)
    built_on = art.manifest["built_on"]
    assert built_on["torch_threads"] == torch.get_num_threads()
    assert built_on["machine"] and isinstance(built_on["cpu_features"], list)
