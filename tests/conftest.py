"""Shared test setup: deterministic, single-threaded, offline."""

import os

# Never reach for a model or data hub from a test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# submitit configures logging when it is first imported (logging.config.dictConfig), which closes every handler
# that exists then: imported mid-session, it closed a handler bound to pytest's captured stderr (absl's, made when
# a test imported dp_accounting) and with it pytest's capture. The runner's tests keep submitit's logging as is.
os.environ.setdefault("SUBMITIT_LOG_LEVEL", "NOCONFIG")
# Every artifact read hashes every byte (the store's quick level skips the middle of files over 64 MiB).
os.environ.setdefault("DISTILDP_VERIFY", "full")

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def smoke_store(tmp_path_factory):
    """One artifact store for the whole session: the smoke profile's pretrained models are built once and
    shared by the pipeline tests and the notebook smoke runs."""
    return tmp_path_factory.mktemp("smoke_store")
