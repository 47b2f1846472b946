import os
import sys
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from tiny_models import SPECS, save_hf_model  # noqa: E402


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory):
    """Each tiny architecture saved once per session: name -> (folder, torch model)."""
    out = {}
    for name in SPECS:
        folder = tmp_path_factory.mktemp(name)
        out[name] = (folder, save_hf_model(name, folder))
    return out


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory):
    """A tiny Qwen3 model with a real (tiny) tokenizer and chat template in the same folder."""
    from tiny_tokenizer import build_tokenizer

    folder = tmp_path_factory.mktemp("chat_model")
    tok = build_tokenizer(folder)
    save_hf_model("qwen3_headdim", folder, vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                  initializer_range=0.2)
    return folder


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop jax's compiled programs after each test module: one process runs the whole suite, and the programs of
    earlier modules would otherwise stay in memory to the end."""
    yield
    jax.clear_caches()
