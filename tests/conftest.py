"""Shared fixtures: tiny configs, and tiny checkpoints trained once per test session."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from helpers.grammar import sentences  # noqa: E402

from hier_ae import HierAEByteTokenizer, HierAEConfig, HierAEForCausalLM, HierAEModel  # noqa: E402
from hier_ae.data.batching import DocumentCropper  # noqa: E402
from hier_ae.training.stages import Stage, train_stage  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# subprocesses (accelerate launch, the example scripts): offline, one thread each, this checkout's
# source first on the path
SUBPROCESS_ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
}

TINY_TOP = {"hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "num_layers": 1}


def tiny_level(**overrides) -> dict:
    level = {
        "hidden_size": 64,
        "num_heads": 4,
        "intermediate_size": 128,
        "window": 32,
        "entropy_layers": 1,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "threshold": 2.0,
        "max_segment_len": 8,
        "codebook_size": 256,
        "dead_after_steps": 20,
        "pooling_heads": 4,
    }
    level.update(overrides)
    return level


def tiny_config(num_levels: int = 1, **kwargs) -> HierAEConfig:
    levels = [tiny_level()]
    if num_levels == 2:
        levels.append(
            tiny_level(
                hidden_size=32,
                num_heads=2,
                intermediate_size=64,
                window=16,
                codebook_size=128,
                max_segment_len=4,
                threshold=4.0,
            )
        )
    return HierAEConfig(levels=levels, top_lm=TINY_TOP, max_position_embeddings=128, **kwargs)


@pytest.fixture(scope="session")
def grammar_data():
    train = sentences(3000, seed=1)
    held_out = sentences(200, seed=2, exclude=set(train))
    return train, held_out


def _train(config: HierAEConfig, train_lines: list[str], stages: list[Stage], seed: int = 0) -> HierAEModel:
    torch.manual_seed(seed)
    model = HierAEModel(config)
    batches = DocumentCropper(
        [s.encode() for s in train_lines], batch_size=32, seq_len=64, seed=seed, p_doc_start=1.0
    )
    for stage in stages:
        t0 = time.perf_counter()
        hist = train_stage(model, stage, batches)
        print(
            f"[fixture] {stage.name}: {len(hist)} steps, "
            f"last objective {hist[-1]:.4f}, {time.perf_counter() - t0:.1f}s"
        )
    return model.eval()


def _save(model: HierAEModel, folder: Path) -> None:
    """Save as HierAEForCausalLM: one folder for AutoModel and AutoModelForCausalLM alike."""
    lm = HierAEForCausalLM(model.config)
    lm.model = model
    lm.save_pretrained(folder)
    HierAEByteTokenizer().save_pretrained(folder)


# what training a fixture runs besides the model's own code (the top-level modules)
FIXTURE_TRAINING_FILES = ("training/stages.py", "training/nonfinite.py", "data/batching.py")


def _fixture_key(name: str, stages: list[Stage]) -> str:
    """Everything a trained fixture depends on: the model's code (the top level of the package,
    which is what ships with a model), the training loop and batching, this file, the grammar, the
    stages, and the torch / transformers versions and thread count (float reductions follow them).
    Editing evaluation, publishing or data-loading code keeps the cached fixtures."""
    import transformers

    h = hashlib.sha256()
    here = Path(__file__).parent
    pkg = REPO / "src" / "hier_ae"
    files = [*sorted(pkg.glob("*.py")), *(pkg / f for f in FIXTURE_TRAINING_FILES)]
    for p in [*files, here / "conftest.py", here / "helpers" / "grammar.py"]:
        h.update(p.relative_to(REPO).as_posix().encode() + b"\0" + p.read_bytes())
    h.update(
        f"{name}|{stages}|{torch.__version__}|{transformers.__version__}|{torch.get_num_threads()}".encode()
    )
    return h.hexdigest()[:16]


def _trained_fixture(request, tmp_path_factory, name: str, config, lines, stages):
    """Train once per test session; across sessions, reuse pytest's cache (`.pytest_cache`) when
    nothing the training depends on changed (`_fixture_key`). A clean checkout (CI) always trains.
    Tests get a private copy of the folder, so one that corrupts it cannot poison the cache."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    folder = tmp_path_factory.mktemp(name)
    cache = getattr(request.config, "cache", None)  # None under `-p no:cacheprovider`
    stored = Path(cache.mkdir(f"hier_ae_{name}_{_fixture_key(name, stages)}")) if cache else None
    if stored is not None and (stored / "model.safetensors").exists():
        shutil.copytree(stored, folder, dirs_exist_ok=True)
        model = HierAEForCausalLM.from_pretrained(folder).model.eval()
        print(f"[fixture] {name}: reused the trained checkpoint cached in {stored}")
        return model, folder
    model = _train(config, lines, stages)
    _save(model, folder)
    if stored is not None:
        tmp = stored.with_name(stored.name + f".tmp{os.getpid()}")
        shutil.copytree(folder, tmp)
        shutil.rmtree(stored, ignore_errors=True)
        tmp.rename(stored)
    return model, folder


@pytest.fixture(scope="session")
def trained_1level(request, tmp_path_factory, grammar_data):
    """A 1-level model trained on grammar sentences (all stages, about 1.5 minutes on 2 cores)."""
    stages = [
        Stage("entropy", 0, 150, 3e-3),
        Stage("autoencoder", 0, 800, 3e-3),
        Stage("top_lm", None, 100, 3e-3),
        Stage("predict", None, 300, 2e-3),
    ]
    return _trained_fixture(
        request, tmp_path_factory, "trained_1level", tiny_config(1), grammar_data[0], stages
    )


@pytest.fixture(scope="session")
def trained_inputs(request, tmp_path_factory, grammar_data):
    """trained_1level with the decoder inputs configs/small.yaml ships: the entropy model's states
    (`decoder_reads_entropy`) and hashed n-grams with dropout (about 1.5 minutes on 2 cores)."""
    stages = [
        Stage("entropy", 0, 150, 3e-3),
        Stage("autoencoder", 0, 800, 3e-3),
        Stage("top_lm", None, 100, 3e-3),
        Stage("predict", None, 300, 2e-3),
    ]
    level = tiny_level(
        decoder_reads_entropy=True, decoder_ngrams=[3, 4, 5], ngram_buckets=1024, ngram_dropout=0.3
    )
    config = HierAEConfig(levels=[level], top_lm=TINY_TOP, max_position_embeddings=128)
    return _trained_fixture(request, tmp_path_factory, "trained_inputs", config, grammar_data[0], stages)


@pytest.fixture(scope="session")
def trained_2level(request, tmp_path_factory, grammar_data):
    """A 2-level model trained on grammar sentences (all stages, about 2 minutes on 2 cores)."""
    stages = [
        Stage("entropy", 0, 150, 3e-3),
        Stage("autoencoder", 0, 500, 3e-3),
        Stage("entropy", 1, 150, 3e-3),
        Stage("autoencoder", 1, 400, 3e-3),
        Stage("top_lm", None, 100, 3e-3),
        Stage("predict", None, 200, 2e-3),
    ]
    return _trained_fixture(
        request, tmp_path_factory, "trained_2level", tiny_config(2), grammar_data[0], stages
    )
