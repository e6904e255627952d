"""What several test modules build: tiny tokenizers and GPT-2s, DP-SGD references, the runner and a stand-in notebook.

Test modules import from here, never from each other.
"""

from pathlib import Path

import nbformat
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from distildp.data.corpus import control_prefix
from distildp.dp.config import PrivacyConfig
from distildp.dp.dpsgd import train_causal_lm, untie_embeddings
from distildp.lm.training import TrainConfig, collate_lm, lm_loss_per_sequence

ROOT = Path(__file__).resolve().parents[1]
EOS = "<|endoftext|>"

# ---------------------------------------------------------------------------------------------- generation
CODES = [
    {"Business Category": "Restaurants", "Review Stars": "5.0"},
    {"Business Category": "Hotels", "Review Stars": "1.0"},
    {"Business Category": "Auto Repair", "Review Stars": "3.0"},
]
COLUMNS = {"label_category": "Business Category", "label_stars": "Review Stars"}


def code_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE of 400 tokens that knows the CODES' prefixes and a few review words."""
    words = "the food was great terrible service room car repair slow friendly staff clean dirty".split()
    texts = [control_prefix(c) for c in CODES] + [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(vocab_size=400, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, pad_token=EOS)
    tok.model_max_length = 64
    return tok


def code_teacher(tokenizer) -> GPT2LMHeadModel:
    """A random one-layer GPT-2 over `tokenizer`'s vocabulary with 64 positions, in eval mode."""
    torch.manual_seed(1)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=16,
        n_layer=1,
        n_head=2,
        n_positions=64,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return GPT2LMHeadModel(config).eval()


# ---------------------------------------------------------------------------------------------- DP-SGD
VOCAB = 100


def tiny_model(seed: int = 0, n_embd: int = 32, n_layer: int = 2, untie: bool = False) -> GPT2LMHeadModel:
    """A tiny GPT-2 without dropout, so a training-mode forward pass is deterministic."""
    torch.manual_seed(seed)
    no_dropout = dict.fromkeys(("resid_pdrop", "embd_pdrop", "attn_pdrop"), 0.0)
    sizes = {"vocab_size": VOCAB, "n_embd": n_embd, "n_layer": n_layer, "n_head": 2, "n_positions": 32}
    model = GPT2LMHeadModel(GPT2Config(**sizes, bos_token_id=0, eos_token_id=0, **no_dropout))
    if untie:
        untie_embeddings(model)
    return model


def make_examples(n: int, seed: int = 0, min_len: int = 2, max_len: int = 12) -> list[dict]:
    """[eos] + random tokens + [eos], with unequal lengths so batches carry padding."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        out.append({"input_ids": [0] + torch.randint(1, VOCAB, (length,), generator=g).tolist() + [0]})
    return out


def single_example_grads(model: torch.nn.Module, example: dict) -> dict[str, torch.Tensor]:
    """Reference: the gradient of one example's loss, computed on that example alone (no padding)."""
    model.zero_grad(set_to_none=True)
    lm_loss_per_sequence(model, collate_lm([example], pad_id=0)).sum().backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def poisson_batch(n: int, q: float, seed: int) -> list[int]:
    """Re-draw the first Poisson batch exactly as Opacus' sampler does with our seeded generator."""
    mask = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < q
    return mask.nonzero().flatten().tolist()


def one_step(model, examples, batch_size, privacy_cfg, lr=0.5, physical=None, seed=3):
    cfg = TrainConfig(
        epochs=1, batch_size=batch_size, physical_batch_size=physical, lr=lr, optimizer="sgd", seed=seed, max_steps=1
    )
    return train_causal_lm(model, examples, cfg, privacy_cfg, progress=False)


def reference_step(model, examples, batch, batch_size, clip, lr=0.5):
    """Hand-written DP-SGD without noise: clip each example's gradient, sum, divide by the
    EXPECTED batch size (as Opacus does), take one SGD step."""
    model.train()
    total = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for i in batch:
        grads = single_example_grads(model, examples[i])
        norm = torch.sqrt(sum((g**2).sum() for g in grads.values()))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        for name in total:
            total[name] += factor * grads[name]
    with torch.no_grad():
        for name, p in model.named_parameters():
            p -= lr * total[name] / batch_size
    return params(model)


def seeded_privacy(**fields) -> PrivacyConfig:
    """A PrivacyConfig whose Poisson batches and noise come from the training seed, so a test can redraw them."""
    return PrivacyConfig(secret_randomness=False, **fields)


# ---------------------------------------------------------------------------------------------- the runner
from distildp.runner import cli as runner_cli  # noqa: E402

PARAMETERS = """profile: str = "quick"
overrides: dict = {}
method: str = "distildp"
epsilon: float = 2.0
seed: int = 0
store: str = ""
row_path: str = ""
"""

# A fake pipeline: perplexity falls with epsilon and lam; seed 13 fails, like a crashing point.
BODY = """
import json, math, os
with open(EXECUTIONS, "a") as f:
    f.write(os.path.basename(os.path.dirname(row_path)) + "\\n")
if seed == 13:
    raise RuntimeError("stand-in failure for seed 13")
reference = method.startswith(("pretrained", "nonprivate"))
eps = (0.0 if method.startswith("pretrained") else math.inf) if reference else epsilon
ppl = 30.0 if method.startswith("pretrained") else 10.0 + 10.0 / epsilon + seed + overrides.get("lam", 0.4)
row = {"dataset": overrides.get("dataset", "builtin"), "method": method, "epsilon": eps, "epsilon_spent": eps,
       "delta": 1e-5, "seed": seed, "student_ppl": ppl, "teacher_ppl": ppl - 1, "floor": 5.0,
       "teacher_floor": 4.0, "private": not reference, "accountant": "prv", "noise_multiplier": 1.0,
       "sample_rate": 0.1, "steps": 10, "mechanisms": "", "histogram": "", "synthetic_size": 48,
       "wall_time_s": 0.1, "run_time_s": 0.1, "threads": os.environ.get("OMP_NUM_THREADS")}
tmp = row_path + ".tmp"
with open(tmp, "w") as f:
    json.dump(row, f)
os.replace(tmp, row_path)
"""


def make_notebook(directory: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    executions = directory / "executions.txt"
    nb.cells = [
        nbformat.v4.new_markdown_cell("# stand-in"),
        params,
        nbformat.v4.new_code_cell(f"EXECUTIONS = {str(executions)!r}\n" + BODY),
    ]
    path = directory / "standin.ipynb"
    nbformat.write(nb, path)
    return path


def executions(directory: Path) -> list[str]:
    path = directory / "executions.txt"
    return sorted(path.read_text().split()) if path.exists() else []


def cli(grid: Path, results: Path, *extra: str) -> int:
    """`python -m distildp.runner --grid <grid> --results <results> --no-progress <extra>`, in this process."""
    return runner_cli.main(["--grid", str(grid), "--results", str(results), "--no-progress", *extra])
