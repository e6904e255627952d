"""Data-parallel DP-SGD and sharded generation on 2 CPU processes (gloo), against one process.

Each group of checks runs its processes once (forked by torch.multiprocessing, with the environment variables torchrun
would give them) and the tests assert on what they returned; the slow ones also run torchrun itself.
"""

import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

import distildp.distill.generate as gen
import distildp.pipeline.private_models as private_models_module
import distildp.pipeline.synthetic_stage as synthetic_stage_module
from distildp.core import distributed
from distildp.core.artifacts import ArtifactStore
from distildp.core.manifests import config_hash
from distildp.distill.generate import generate_synthetic
from distildp.distill.synthetic_store import PROGRESS_FILE, load_synthetic
from distildp.dp.dpsgd import train_causal_lm
from distildp.lm.sampling import GenerationConfig
from distildp.lm.training import TrainConfig
from distildp.pipeline import Pipeline
from distildp.pipeline.private_models import private_model
from distildp.pipeline.public_models import pretrained
from distildp.pipeline.settings import make_settings

from helpers import (
    CODES,
    COLUMNS,
    ROOT,
    code_teacher,
    code_tokenizer,
    make_examples,
    params,
    seeded_privacy,
    tiny_model,
)

WORLD = 2
N = 24  # examples: 12 per process
MODES = ("hooks", "ghost", "bookkeeping")
# q = 1 puts every example in every batch; the PRV accountant then takes log(1 - q) = log(0) on its way
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")


# ---------------------------------------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process(rank: int, world: int, port: int, fn, args, out_dir: str) -> None:
    """One of `world` processes, with the environment torchrun would give it; saves what fn returns."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    distributed.init(world)
    try:
        torch.save(fn(rank, *args), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def run_processes(fn, *args, out_dir, world: int = WORLD) -> list:
    """fn(rank, *args) in each of `world` processes of one gloo group; their results, by rank."""
    # forked, not spawned: the processes start in a second instead of importing torch again for tens of seconds
    mp.start_processes(_process, args=(world, _free_port(), fn, args, str(out_dir)), nprocs=world, start_method="fork")
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(world)]


# ---------------------------------------------------------------------------------------------- DP-SGD
def _config(batch_size: int, epochs: float) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=batch_size, physical_batch_size=5, lr=0.5, optimizer="sgd", seed=3)


def _train(mode: str, sigma: float, batch_size: int, epochs: float, data_parallel: bool, clip: float = 0.1):
    model = tiny_model(seed=1)
    privacy_cfg = seeded_privacy(noise_multiplier=sigma, max_grad_norm=clip, grad_sample_mode=mode, delta=1e-3)
    report = train_causal_lm(
        model,
        make_examples(N, seed=2),
        _config(batch_size, epochs),
        privacy_cfg,
        progress=False,
        data_parallel=data_parallel,
    )
    return params(model), report


def _dp_sgd_cases(rank: int) -> dict:
    """Every DP-SGD run the tests compare, in one process of the group."""
    out = {}
    for mode in MODES:
        # q = 1: every example is in every global batch, so one process and two see the same batches
        out[mode, "sigma0"] = _train(mode, 0.0, N, 2, True)[0]
        out[mode, "sigma1"] = _train(mode, 1.0, N, 1, True)[0]
        out[mode, "sigma0_one_step"] = _train(mode, 0.0, N, 1, True)[0]
    weights, report = _train("bookkeeping", 1.0, 2, 0.5, True)  # q = 1/12: some processes' batches are empty
    out["small_q"] = (weights, report.as_dict())
    return out


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    return run_processes(_dp_sgd_cases, out_dir=tmp_path_factory.mktemp("dp_sgd"))


def _assert_same(a: dict, b: dict, **tolerance) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], **tolerance, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("mode", MODES)
def test_noise_free_update_of_two_processes_equals_one_process(two_processes, mode):
    """Clipping is per example, not per process: with sigma = 0 the two-process update (each process holding
    half of the global batch) equals the one-process update, and both processes hold the same weights."""
    one = _train(mode, 0.0, N, 2, False)[0]
    rank0, rank1 = (result[mode, "sigma0"] for result in two_processes)
    _assert_same(rank0, rank1, rtol=0, atol=0)
    _assert_same(rank0, one, rtol=1e-5, atol=1e-6)
    # clipping is active: clipping each process's sum instead of each example would give another update
    unclipped = _train(mode, 0.0, N, 2, False, clip=1e6)[0]
    assert max((one[k] - unclipped[k]).abs().max() for k in one) > 1e-3


@pytest.mark.parametrize("mode", MODES)
def test_noise_is_added_once_with_std_sigma_c_over_the_global_batch(two_processes, mode):
    """One SGD step at lr 0.5 with sigma = 1 minus the same step with sigma = 0 is -lr * noise / B: every weight's
    noise is N(0, (sigma C / B)^2) with B = 24 the expected global batch. Noise added by both processes would
    double its variance, noise scaled by the per-process batch would quadruple it."""
    rank0, rank1 = two_processes
    _assert_same(rank0[mode, "sigma1"], rank1[mode, "sigma1"], rtol=0, atol=0)
    noisy, clean = rank0[mode, "sigma1"], rank0[mode, "sigma0_one_step"]
    lr, sigma, clip, batch = 0.5, 1.0, 0.1, N
    z = torch.cat([((clean[k] - noisy[k]) / lr * batch / (sigma * clip)).flatten() for k in clean]).double()
    d = z.numel()
    variance = float(z.pow(2).mean())  # chi-square with d degrees of freedom, over d
    assert abs(variance - 1) < 6 * math.sqrt(2 / d), (variance, d)  # 6 standard deviations: 1 +- 0.05 here
    assert abs(float(z.mean())) < 6 / math.sqrt(d)
    # the very noise one process adds (rank 0 draws it from the same seeded generator)
    _assert_same(noisy, _train(mode, 1.0, N, 1, False)[0], rtol=1e-5, atol=1e-6)


def test_epsilon_steps_and_rate_are_those_of_one_process(two_processes):
    """Same sigma, q and steps, so the same accountant and epsilon; every process takes every step even when its
    own Poisson batch is empty."""
    weights, report = two_processes[0]["small_q"]
    _, one = _train("bookkeeping", 1.0, 2, 0.5, False)
    assert report["steps"] == one.steps == 6
    assert report["sample_rate"] == one.sample_rate == 2 / N
    assert report["noise_multiplier"] == one.noise_multiplier == 1.0
    assert report["epsilon_spent"] == one.epsilon_spent and math.isfinite(one.epsilon_spent)
    assert report["world_size"] == WORLD and report["backend"] == "gloo"
    assert any("data-parallel over 2 processes" in note for note in report["notes"])
    _assert_same(weights, two_processes[1]["small_q"][0], rtol=0, atol=0)
    # some process did see an empty batch (each draws its 12 examples at q = 1/12 with its own seed)
    empty = 0
    for rank in range(WORLD):
        generator = torch.Generator().manual_seed(distributed.rank_seed(3, rank))
        empty += sum(int((torch.rand(N // WORLD, generator=generator) < 2 / N).sum()) == 0 for _ in range(6))
    assert empty > 0


def test_data_parallel_needs_a_process_group_and_dp_sgd():
    with pytest.raises(ValueError, match="torchrun"):
        _train("hooks", 1.0, N, 1, True)
    with pytest.raises(ValueError, match="non-private"):
        train_causal_lm(tiny_model(), make_examples(N), _config(8, 1), progress=False, data_parallel=True)


def test_world_size_must_match_what_torchrun_launched(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    distributed.check_world_size(1)
    with pytest.raises(ValueError, match="torchrun --nproc_per_node 2"):
        distributed.check_world_size(2)
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="--world-size 4"):
        distributed.check_world_size(2)
    with pytest.raises(ValueError, match="--world-size 4"):
        distributed.check_world_size(1)
    with pytest.raises(ValueError, match="1 or more"):
        distributed.check_world_size(0)


# ---------------------------------------------------------------------------------------------- generation
COUNTS = (6, 5, 9)  # 20 samples in chunks of 3: chunks 0, 2, 4, 6 are rank 0's, 1, 3, 5 rank 1's


def _generate(out_dir, sharded: bool) -> dict:
    tokenizer = code_tokenizer()
    return generate_synthetic(
        code_teacher(tokenizer),
        tokenizer,
        list(zip(CODES, COUNTS)),
        out_dir,
        GenerationConfig(max_length=24, batch_size=4, chunk_size=3),
        seed=5,
        progress=False,
        code_columns=COLUMNS,
        sharded=sharded,
    ).summary


def _generate_shard(rank: int, out_dir, die_before_chunk: int | None) -> dict:
    if rank == 1 and die_before_chunk is not None:
        real_write = gen.write_chunk

        def write(path, frame, metadata):
            if metadata["chunk_index"] == die_before_chunk:
                # once rank 0 has written all its chunks, so the folder the rerun finds is always the same
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and len(list(path.parent.glob("chunk-*"))) < 5:
                    time.sleep(0.05)
                os._exit(3)  # no exception handler, no cleanup: as SIGKILL
            real_write(path, frame, metadata)

        gen.write_chunk = write  # in this process only
    return _generate(out_dir, sharded=True)


@pytest.fixture(scope="module")
def one_process_set(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("one_process") / "data"
    return out_dir, _generate(out_dir, sharded=False)


def test_two_shards_write_exactly_the_one_process_set(one_process_set, tmp_path):
    one_dir, one = one_process_set
    summaries = run_processes(_generate_shard, tmp_path / "data", None, out_dir=tmp_path)
    assert one["n_chunks"] == 7
    for summary in summaries:
        assert summary["world_size"] == WORLD and summary["chunks_generated_this_call"] == 7
        assert summary["per_code"] == one["per_code"] and summary["fingerprint"] == one["fingerprint"]
    sharded = load_synthetic(tmp_path / "data")
    pd.testing.assert_frame_equal(sharded, load_synthetic(one_dir))
    assert sharded["text"].tolist() == load_synthetic(one_dir)["text"].tolist()
    progress = json.loads((tmp_path / "data" / PROGRESS_FILE).read_text())
    assert progress["complete"] and progress["chunks_done"] == list(range(7))
    assert not list((tmp_path / "data").glob(".*tmp*"))


def test_a_killed_shard_resumes_with_only_the_missing_chunks(one_process_set, tmp_path):
    one_dir, _ = one_process_set
    with pytest.raises(mp.ProcessExitedException):
        run_processes(_generate_shard, tmp_path / "data", 3, out_dir=tmp_path)
    kept = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "data").glob("chunk-*")}
    assert sorted(kept) == [f"chunk-{i:05d}.parquet" for i in (0, 1, 2, 4, 6)]
    summaries = run_processes(_generate_shard, tmp_path / "data", None, out_dir=tmp_path)
    assert [s["chunks_generated_this_call"] for s in summaries] == [2, 2] and summaries[0]["resumed"]
    assert {name: (tmp_path / "data" / name).stat().st_mtime_ns for name in kept} == kept  # untouched
    pd.testing.assert_frame_equal(load_synthetic(tmp_path / "data"), load_synthetic(one_dir))


def test_sharded_generation_needs_a_process_group(tmp_path):
    with pytest.raises(ValueError, match="torchrun"):
        _generate(tmp_path / "data", sharded=True)


# ---------------------------------------------------------------------------------------------- the store
def _store_build(rank: int, root, collective: bool, fail: str | None) -> dict:
    """Every process asks for the same artifact twice; rank 0's files become it. A collective builder all-reduces.
    fail: 'commit' (rank 0's builder returns a key the manifest refuses) or 'builder' (rank 0's builder raises)."""
    store, calls = ArtifactStore(root), []

    def builder(out):
        calls.append(str(out))
        total = torch.tensor([rank + 1.0])
        if collective:
            torch.distributed.all_reduce(total)
        if fail == "builder" and rank == 0:
            raise OSError("disk full")
        (out / "written_by.txt").write_text(f"rank {rank}, sum {total.item():g}")
        return {"metrics": {"sum": total.item()}, **({"unknown": 1} if fail == "commit" and rank == 0 else {})}

    try:
        art = store.build("stage", {"x": 1}, builder, collective=collective)
        again = store.build("stage", {"x": 1}, builder, collective=collective)
    except Exception as err:  # what each process saw
        return {"error": f"{type(err).__name__}: {err}"}
    return {
        "path": str(art.path),
        "again": str(again.path),
        "text": (art.path / "written_by.txt").read_text(),
        "built_on": art.manifest["built_on"],
        "builds": calls,
    }


def _no_leftovers(root: Path) -> None:
    assert [p.name for p in (root / "stage").iterdir() if p.name.startswith(".")] == [
        f".{config_hash('stage', {'x': 1})}.lock"
    ]


def test_collective_build_runs_everywhere_and_rank_0_writes(tmp_path):
    rank0, rank1 = run_processes(_store_build, tmp_path / "store", True, None, out_dir=tmp_path)
    assert rank0["path"] == rank1["path"] == rank0["again"] == rank1["again"]
    assert rank0["text"] == "rank 0, sum 3"  # rank 0's file, after a collective every process took part in
    assert rank0["built_on"]["world_size"] == WORLD and rank0["built_on"]["backend"] == "gloo"
    assert len(rank0["builds"]) == len(rank1["builds"]) == 1  # the second call found it built, on both
    assert ".tmp-" in rank0["builds"][0] and ".scratch-" in rank1["builds"][0]
    _no_leftovers(tmp_path / "store")


def test_other_builds_run_on_rank_0_alone(tmp_path):
    rank0, rank1 = run_processes(_store_build, tmp_path / "store", False, None, out_dir=tmp_path)
    assert rank0["path"] == rank1["path"] and rank0["text"] == "rank 0, sum 1"
    assert len(rank0["builds"]) == 1 and rank1["builds"] == []
    assert "world_size" not in rank0["built_on"]  # built by one process
    _no_leftovers(tmp_path / "store")


@pytest.mark.parametrize("collective, fail", [(True, "commit"), (False, "commit"), (False, "builder")])
def test_a_failure_on_rank_0_fails_every_process(tmp_path, collective, fail):
    rank0, rank1 = run_processes(_store_build, tmp_path / "store", collective, fail, out_dir=tmp_path)
    why = "unknown keys" if fail == "commit" else "OSError: disk full"
    assert why in rank0["error"] and why in rank1["error"]
    assert rank1["error"].startswith("RuntimeError: rank 0 could not build stage")
    assert not (tmp_path / "store" / "stage" / config_hash("stage", {"x": 1})).exists()


# ---------------------------------------------------------------------------------------------- the pipeline
EPSILON = 4.0


def _pipeline(world: int, root) -> Pipeline:
    return Pipeline(make_settings("smoke", {"world_size": world}), ArtifactStore(root), progress=False)


def _store_with_public_models(source: Path, root: Path) -> Path:
    """A fresh store holding only `source`'s public models (a DP teacher's key does not depend on world_size, so
    one-process and two-process teachers of the same seed need stores of their own)."""
    for stage in ("tokenizer", "pretrained"):
        shutil.copytree(source / stage, root / stage, ignore=shutil.ignore_patterns(".*"))
    return root


@pytest.fixture(scope="module")
def public_models(smoke_store):
    pipe = _pipeline(1, smoke_store)
    pretrained(pipe, "teacher")
    pretrained(pipe, "student")
    return smoke_store


def _build_method(rank: int, root, method: str, seed: int) -> dict:
    trained = []
    train = private_models_module.train_causal_lm
    private_models_module.train_causal_lm = lambda *args, **kwargs: trained.append(1) or train(*args, **kwargs)
    pipe = _pipeline(WORLD, root)
    arts = pipe.artifacts(method, EPSILON, seed)
    before = len(trained)
    arts["nonprivate_student"] = pipe.reference_model("nonprivate_student", seed)  # no collectives: rank 0 alone
    found = {name: {"path": str(art.path), "manifest": art.manifest} for name, art in arts.items()}
    return found | {"nonprivate_trainings": len(trained) - before}


def _fail(*args, **kwargs):
    raise AssertionError("found built, nothing should train or sample")


def test_two_process_pipeline_keeps_the_keys_and_records_its_processes(public_models, tmp_path, monkeypatch):
    root = _store_with_public_models(public_models, tmp_path / "store")
    rank0, rank1 = run_processes(_build_method, root, "distildp", 7, out_dir=tmp_path)
    assert {name: rank0[name]["path"] for name in ("teacher", "synthetic", "student")} == {
        name: rank1[name]["path"] for name in ("teacher", "synthetic", "student")
    }
    teacher, synthetic = rank0["teacher"]["manifest"], rank0["synthetic"]["manifest"]
    assert teacher["privacy"]["world_size"] == WORLD and teacher["privacy"]["backend"] == "gloo"
    assert teacher["built_on"]["world_size"] == synthetic["built_on"]["world_size"] == WORLD
    generation = synthetic["extra"]["generation"]
    assert generation["world_size"] == WORLD and generation["chunks_generated_this_call"] == generation["n_chunks"]
    assert rank0["student"]["manifest"]["built_on"].get("world_size") is None  # built by one process
    assert rank0["nonprivate_trainings"] == 1 and rank1["nonprivate_trainings"] == 0
    assert rank0["nonprivate_student"]["path"] == rank1["nonprivate_student"]["path"]
    assert (Path(rank0["nonprivate_student"]["path"]) / "model.safetensors").exists()
    # one process, the same settings but for world_size: the same keys, found built
    monkeypatch.setattr(private_models_module, "train_causal_lm", _fail)
    monkeypatch.setattr(synthetic_stage_module, "generate_synthetic", _fail)
    arts = _pipeline(1, root).artifacts("distildp", EPSILON, 7)
    assert {name: str(art.path) for name, art in arts.items()} == {name: rank0[name]["path"] for name in arts}
    assert set(arts) == {"teacher", "synthetic", "student"}


def test_world_size_is_a_setting_checked_against_the_launch(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="1 or more"):
        make_settings("smoke", {"world_size": 0})
    with pytest.raises(ValueError, match="torchrun --nproc_per_node 2"):
        _pipeline(2, "unused")
    assert "world_size" not in make_settings("smoke").as_config()  # the default: old recorded settings match
    assert make_settings("smoke", {"world_size": 2}).as_config()["world_size"] == 2


def _dp_teachers(rank: int, root, seeds) -> list[float]:
    pipe = _pipeline(WORLD, root)
    plan = pipe.plan("distildp", EPSILON)
    return [private_model(pipe, "teacher", seed, plan).metrics["test_ppl"] for seed in seeds]


@pytest.mark.slow
def test_a_two_process_dp_teacher_reaches_the_one_process_perplexity_within_seed_noise(public_models, tmp_path):
    """The smoke profile's DP teacher (distildp's noise at epsilon 4) over three seeds, on one process and on two:
    the means differ by less than twice the one-process spread across seeds."""
    seeds = (0, 1, 2)
    pipe = _pipeline(1, _store_with_public_models(public_models, tmp_path / "one"))
    plan = pipe.plan("distildp", EPSILON)
    one = [private_model(pipe, "teacher", seed, plan).metrics["test_ppl"] for seed in seeds]
    two_root = _store_with_public_models(public_models, tmp_path / "two")
    two = run_processes(_dp_teachers, two_root, seeds, out_dir=tmp_path)[0]
    spread = statistics.stdev(one)
    assert spread > 0 and one != two, (one, two)
    assert abs(statistics.mean(two) - statistics.mean(one)) < 2 * spread, (one, two)


@pytest.mark.slow
def test_torchrun_builds_a_method_on_two_processes(public_models, tmp_path):
    """The documented command (docs/scale.md): torchrun starts two processes of the pipeline's command line."""
    root = _store_with_public_models(public_models, tmp_path / "store")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "distildp.pipeline"]
    command += ["--profile", "smoke", "--world-size", "2", "--method", "distildp", "--epsilon", "4", "--seed", "5"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "lib"), os.environ.get("PYTHONPATH", "")])}
    env.update(OMP_NUM_THREADS="1")
    done = subprocess.run(command + ["--store", str(root)], capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.splitlines()
    assert len([line for line in lines if "built by 2 processes" in line]) == 2  # the DP teacher, the synthetic set
    assert any(line.startswith("student: distilled_student") for line in lines)
    row = json.loads(next(line for line in lines if line.startswith("{")))
    assert row["method"] == "distildp" and row["seed"] == 5 and row["epsilon_spent"] <= EPSILON
    [teacher] = ArtifactStore(root).list("private_teacher")
    assert teacher.privacy["world_size"] == 2 and teacher.privacy["epsilon"] <= EPSILON
