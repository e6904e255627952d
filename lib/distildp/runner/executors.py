"""Grid points as submitit jobs, for distildp.runner.jobs: a Slurm job array, or local processes that stand in
for it.

    python -m distildp.runner --grid paper --executor slurm --dry-run   # the sbatch script submitit would submit
    python -m distildp.runner --grid paper --executor slurm             # one array task per unfinished point
    python -m distildp.runner --grid smoke --executor local             # the same jobs, here (submitit's LocalExecutor)

The runner prepares each point as it does for its own processes (point.json) and submits one job per point;
the job runs `python -m distildp.runner --run-point <point dir>`, a command jobs.py builds. This module knows
nothing of grids: it checks a grid's `slurm:` settings, makes the executor and submits the commands.

The `slurm:` settings (`SlurmSettings`) are SlurmExecutor's parameters (sbatch's options, `_` for `-`); `time` is
required for Slurm, since submitit would otherwise ask for 5 minutes. A local job honours `time` and `gpus_per_node` (it
sees that many GPUs: none by default) and runs the moment it is submitted: the LocalExecutor has no array
throttle, so every point of a local array runs at once.
"""

from __future__ import annotations

import contextlib
import difflib
import re
import shlex
import signal
import sys
import threading
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from distildp.core import values


def _setting(meaning: str):
    return field(metadata={"meaning": meaning})


@dataclass(frozen=True)
class SlurmSettings:
    """The schema of a grid's `slurm:` settings (SlurmExecutor's parameters): each key's type, checked by
    distildp.core.values, and what it sets. A grid gives any of them; `time` is required for Slurm."""

    partition: str = _setting("the partition, or queue, the jobs run in")
    account: str = _setting("the account the jobs are charged to")
    qos: str = _setting("the quality of service")
    constraint: str = _setting("the node features a job needs, e.g. a100")
    time: int = _setting("each point's time limit in minutes, 120 for two hours; required for Slurm")
    mem: str = _setting("memory per job in sbatch's syntax with its unit, e.g. 32G or 500M; a bare number is MB")
    gpus_per_node: int = _setting("GPUs per job")
    cpus_per_task: int = _setting("CPU cores per job, which are also the point's threads")
    setup: list[str] = _setting("shell lines each job runs first, e.g. [module load cuda]")
    additional_parameters: dict[str, str | int | float | bool] = _setting(
        "any other sbatch option, e.g. {mail_type: END}"
    )


SLURM_SETTINGS = {f.name: f.metadata["meaning"] for f in fields(SlurmSettings)}  # key -> what it sets
FLAG_SETTINGS = ("partition", "account", "qos", "constraint", "time", "mem", "gpus_per_node", "cpus_per_task")
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # a local job without `time`: no practical limit (submitit's default is 2 minutes)
POLL_S = {"slurm": 30.0, "local": 0.5}  # how often a waiting runner looks at its jobs


class SlurmSettingError(ValueError):
    """A bad `slurm:` setting; `key` names it (empty for the mapping itself)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


def flag_type(key: str) -> type:
    """The type a command-line flag for `key` parses its text into (int or str)."""
    return typing.get_type_hints(SlurmSettings)[key]


def check_slurm_settings(settings: Any) -> dict:
    """The settings, checked: known keys, each of its type (distildp.core.values) and within its range;
    SlurmSettingError naming the key and the fix if not."""
    if not isinstance(settings, dict):
        raise SlurmSettingError("", f"must be a mapping of job settings ({', '.join(SLURM_SETTINGS)})")
    for key in settings:
        if key not in SLURM_SETTINGS:
            close = difflib.get_close_matches(str(key), SLURM_SETTINGS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise SlurmSettingError(str(key), f"unknown key; {hint}the keys of slurm are {sorted(SLURM_SETTINGS)}")
    found = values.fields_problem(settings, SlurmSettings) or _range_problem(settings)
    if found:
        if found.key == "time" and found.expected == "int" and not found.fix:
            found = replace(found, fix="write whole minutes, e.g. 120 for two hours")
        raise SlurmSettingError(found.key, found.message)
    return dict(settings)


def _range_problem(settings: dict) -> values.Problem | None:
    """What the types cannot say: counts' lower bounds, sbatch's memory syntax, non-empty names, and no
    additional_parameters entry that hides a checked key."""
    meaning = SLURM_SETTINGS
    for key, value in settings.items():
        lowest = 0 if key == "gpus_per_node" else 1
        if key in ("time", "gpus_per_node", "cpus_per_task") and value < lowest:
            return values.Problem(key, f">= {lowest}", value, meaning=meaning[key])
        if key == "mem" and not re.fullmatch(r"[1-9][0-9]*[KMGT]", value):
            return values.Problem(key, "a size with its unit, such as '32G' or '500M'", value, meaning=meaning[key])
        if key in ("partition", "account", "qos", "constraint") and not value:
            return values.Problem(key, "non-empty text", value, meaning=meaning[key])
        if key == "additional_parameters":
            for option in value:
                if option in SLURM_SETTINGS:
                    return values.Problem(
                        f"{key}.{option}",
                        "absent here",
                        value[option],
                        f"set it as slurm.{option}, where it is checked",
                    )
    return None


def slurm_parameters(settings: dict, job_name: str, parallelism: int | None) -> dict:
    """SlurmExecutor.update_parameters' arguments: the settings, the job name and the array's parallelism."""
    if "time" not in settings:
        raise SlurmSettingError(
            "time", "not set; give each point's time limit in minutes: `slurm: {time: 120}` in the grid or --time 120"
        )
    parameters = {"job_name": job_name, **settings}
    if parallelism:
        parameters["array_parallelism"] = parallelism
    return parameters


def make_executor(kind: str, folder: Path, settings: dict, job_name: str, parallelism: int | None):
    """A submitit executor for `kind` ('slurm' or 'local') writing its pickles and logs in `folder`."""
    import submitit

    if kind == "slurm":
        executor = submitit.SlurmExecutor(folder=folder)
        executor.update_parameters(**slurm_parameters(settings, job_name, parallelism))
    elif kind == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(
            timeout_min=settings.get("time", LOCAL_TIMEOUT_MIN), gpus_per_node=settings.get("gpus_per_node", 0)
        )
    else:
        raise ValueError(f"no executor {kind!r}: choose slurm or local")
    return executor


def sbatch_script(folder: Path, settings: dict, job_name: str, n_jobs: int, parallelism: int | None) -> str:
    """The sbatch script SlurmExecutor submits for `n_jobs` jobs (an array when there are several), built by
    submitit's own builder from the same parameters, without submitting (nor needing Slurm)."""
    # submitit's private builder, the one SlurmExecutor writes every script with (submitit is pinned, and
    # tests/test_executors.py checks the dry run against the script a mocked submission writes)
    from submitit.slurm.slurm import _make_sbatch_string

    folder = Path(folder).expanduser().absolute()  # as submitit's Executor stores it
    # SlurmExecutor._submitit_command_str: what every array task runs (it unpickles the task's own command)
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    parameters = slurm_parameters(settings, job_name, parallelism)
    if n_jobs > 1:  # one job is submitted alone, not as an array of one
        parameters["map_count"] = n_jobs
    return _make_sbatch_string(command=command, folder=folder, **parameters)


def submit(executor, commands: list[list[str]], cwd: Path) -> list:
    """One job per command, submitted together (a job array on Slurm); the submitit jobs, in order."""
    from submitit.helpers import CommandFunction

    with interruptible_children(), executor.batch():  # the batch starts the jobs as it closes
        jobs = [executor.submit(CommandFunction(command, cwd=cwd)) for command in commands]
    return jobs


@contextlib.contextmanager
def interruptible_children():
    """Processes started inside get SIGINT's default action even when this process ignores SIGINT.

    Submitit cancels a local job with SIGINT; a process started with SIGINT ignored (as `make run &` in a script
    starts it, without job control) would pass that on to its jobs, and `job.cancel()` would then do nothing.
    Inside, SIGINT is caught by a handler that does nothing: this process still ignores it, while a caught signal,
    unlike an ignored one, is reset to its default in a new program. Only the main thread can change a signal's
    handler; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def as_completed(jobs: list, kind: str):
    """The jobs as they finish (succeeded, failed or cancelled)."""
    from submitit.helpers import as_completed as submitit_as_completed

    return submitit_as_completed(jobs, poll_frequency=POLL_S[kind])
