"""What an exercise check is: a student's function run against the library's, with feedback that names the mistake.

The teaching notebooks (01, 02, 04, 05, 07) ask for seven pieces of DistilDP by hand. Each otter test cell calls
one `check_*` function with the student's function: the DP-SGD step, the accountant and the DP histogram are
`distildp.teaching.dp_exercises`'; the sampling distribution, the distillation loss, the exact floor and the results'
verdict
are `distildp.teaching.model_exercises`'. `hidden=False` is the quick public check the student runs in the notebook,
`hidden=True` the grading check (several seeds and the edge cases: padding, t != 1, lambda = 0 and 1, empty
batches, codes that never occur). A check returns None when the answer is right and raises `ExerciseError` (an
AssertionError, which otter reports) naming the mistake when it recognises it: the checks compute the usual wrong
answers too (batch-level clipping, KL without t^2, top-k without renormalising, ...) and say which one the
student's output matches.

This module holds what every check shares: the error, calling the student's function with clear feedback when it
is missing or fails, and the seeds a check runs on. Building the student notebooks and grading them with otter is
`distildp.teaching.grading`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class ExerciseError(AssertionError):
    """A student's answer is wrong; the message says how (otter shows it as the test's feedback)."""


def fail(message: str) -> None:
    """Reject the answer with `message` (what is wrong and what to do)."""
    raise ExerciseError(message)


def call_answer(fn: Callable, name: str, *args, **kwargs) -> Any:
    """Call the student's function; None (the `...` left in place) and exceptions become clear feedback."""
    if not callable(fn):
        fail(f"{name} is {fn!r}, not a function: define it in the exercise cell and run that cell first.")
    try:
        result = fn(*args, **kwargs)
    except NotImplementedError:
        fail(f"{name} is not written yet: replace the `...` in its body with your code.")
    except Exception as err:  # the student's bug, reported with the inputs that caused it
        fail(f"{name} raised {type(err).__name__}: {err}")
    if result is None or result is Ellipsis:
        fail(f"{name} returned {result!r}: replace the `...` in its body with your code and `return` the result.")
    return result


def answer_tensor(value: Any, name: str) -> torch.Tensor:
    """The student's result as a float64 tensor, or feedback that it must be one."""
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except Exception:
        fail(f"{name} must return a tensor (or a list of numbers), got {type(value).__name__}.")


def tensor_answer(fn: Callable, name: str, args: tuple, like: torch.Tensor, holds: str) -> torch.Tensor:
    """The student's `fn(*args)` as a float64 tensor of `like`'s shape; if the shape differs, the feedback gives
    both and `holds` (what the result holds, e.g. ': one loss per sequence')."""
    got = answer_tensor(call_answer(fn, name, *args), name)
    if got.shape != like.shape:
        fail(f"{name} returned shape {tuple(got.shape)}; expected {tuple(like.shape)}{holds}.")
    return got


def seeds_for(hidden: bool) -> list[int]:
    """The seeds a check runs on: one for the public check, five for grading."""
    return [0, 1, 2, 3, 4] if hidden else [0]
