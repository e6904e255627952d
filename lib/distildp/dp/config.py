"""DP-SGD's settings: `PrivacyConfig` (the budget, the clipping norm, the accountant, the clipping mode, where the
randomness comes from) and the checks it passes before a run starts. The optimisation settings are
`distildp.lm.training.TrainConfig`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from distildp.dp import privacy

# What a manifest says about where the DP randomness came from.
RANDOMNESS = {
    "secret": "secret: Poisson batches and noise drawn from OS entropy",
    "reproducible": "reproducible: noise derived from the published seed, not a releasable model",
}
GRAD_SAMPLE_MODES = ("hooks", "ghost", "bookkeeping")  # the clipping modes (distildp.dp.clipping)


@dataclass
class PrivacyConfig:
    """DP-SGD settings. target_epsilon = math.inf (and no noise_multiplier) means non-private."""

    target_epsilon: float = math.inf
    delta: float | str | None = None  # None: below 1/N; 'paper': 1/N (see distildp.dp.privacy.resolve_delta)
    max_grad_norm: float = 1.0
    accountant: str = "prv"
    noise_multiplier: float | None = None  # None: calibrated so the run spends target_epsilon
    # 'hooks' (handles tied embeddings), 'ghost' (unties them) or 'bookkeeping' (one backward pass, keeps
    # them tied; distildp.dp.bookkeeping)
    grad_sample_mode: str = "hooks"
    conv1d_sampler: bool = True  # use distildp.dp.conv1d_grad_sampler for GPT-2's Conv1D layers
    allow_delta_one_over_n: bool = False  # the paper's delta = 1/N (weaker than the default)
    # The (epsilon, delta) guarantee assumes the Poisson batches and the noise are secret. True: both are drawn
    # from OS entropy, never from the training seed. False: derived from the seed, for teaching and benchmarks on
    # synthetic data (anyone with the seed can regenerate the noise: not a releasable model).
    secret_randomness: bool = True

    @property
    def private(self) -> bool:
        return math.isfinite(self.target_epsilon) or self.noise_multiplier is not None

    def check(self, n: int) -> None:
        """Raise a clear error for settings no run on `n` examples can use."""
        if not self.target_epsilon > 0:
            raise ValueError(f"target_epsilon={self.target_epsilon}; epsilon must be > 0 (math.inf = non-private).")
        if self.private:
            privacy.resolve_delta(self.delta, n, allow_one_over_n=self.allow_delta_one_over_n)  # raises clear errors
        if self.accountant not in privacy.ACCOUNTANTS:
            raise ValueError(f"accountant={self.accountant!r}; choose one of {privacy.ACCOUNTANTS}.")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ValueError(f"grad_sample_mode={self.grad_sample_mode!r}; choose one of {GRAD_SAMPLE_MODES}.")
        if not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm={self.max_grad_norm}; the clipping norm must be > 0.")
        if self.noise_multiplier is not None and not self.noise_multiplier >= 0:
            raise ValueError(f"noise_multiplier={self.noise_multiplier}; must be >= 0, or None to calibrate.")

    @property
    def randomness(self) -> str:
        """What the manifest says about where this run's Poisson batches and noise came from (RANDOMNESS)."""
        return RANDOMNESS["secret" if self.secret_randomness else "reproducible"]
