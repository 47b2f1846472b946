"""Extraction as the Self-Guard authors' trainer read the states (IBM activation-steering's `SteeringVector.train`:
pad id 0, pairs interleaved, right-padded batches of 16, `hidden_states[k + 1][i][-1]`), checked against that
loop written in PyTorch with transformers on a tiny Qwen3; and the `.svec` we write against the authors' file."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import selfguard_jax as sgj
from selfguard_jax import extract
from selfguard_jax.extract_authors import authors_pair_states
from selfguard_jax.vector_files import load_svec, save_svec

PEER = next((p for p in (Path(__file__).resolve().parents[1].parent / "shared" / "peer-data",
                         Path("/work/shared/peer-data")) if p.is_dir()), Path("peer-data-not-found"))
pytestmark = pytest.mark.slow  # a model load and 42 prompts through both models: about 20 s
AUTHORS_SVEC = PEER / "selfguard" / "Qwen3-8B_star1000_selfreminder_diff.svec"
WORDS = ["How do I bake bread?", "What is 3 plus 4?", "Sure, here is how.", "Then wait.", "I cannot help with that.",
         "First mix flour and water."]


def texts(tok, n: int) -> tuple[list[str], list[str]]:
    """n (positive, negative) chat prompts of varied lengths: with and without a system prompt and suffix."""
    rng = np.random.default_rng(0)
    questions = [" ".join(rng.choice(WORDS, size=1 + i % 5)) for i in range(n)]
    pos = [tok.apply_chat_template([{"role": "system", "content": "Be responsible."},
                                    {"role": "user", "content": q + " Remember, be responsible!"}],
                                   tokenize=False, add_generation_prompt=True) for q in questions]
    neg = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
           for q in questions]
    return pos, neg


def trainer_states(model, tok, pos: list[str], neg: list[str], batch_size: int = 16) -> np.ndarray:
    """IBM activation-steering's read_representations / batched_get_hiddens with accumulate_last_x_tokens=1, as
    the authors ran it: [2N, L + 1, D] in the order positive 0, negative 0, positive 1, ..."""
    tok.pad_token_id = 0  # SteeringVector.train
    train_strs = [s for pair in zip(pos, neg) for s in pair]
    layers = range(model.config.num_hidden_layers)
    hidden = {k: [] for k in [-1] + list(layers)}
    with torch.no_grad():
        for p in range(0, len(train_strs), batch_size):
            batch = train_strs[p:p + batch_size]
            out = model(**tok(batch, padding=True, return_tensors="pt"), output_hidden_states=True)
            for k in hidden:
                for batch_hidden in out.hidden_states[k + 1]:
                    hidden[k].append(torch.mean(batch_hidden[-1:, :], dim=0).numpy())
    return np.stack([np.vstack(hidden[k]) for k in hidden], axis=1)


@pytest.fixture(scope="module")
def tiny(chat_model_dir):
    tok = transformers.AutoTokenizer.from_pretrained(chat_model_dir)
    assert tok.padding_side == "right"  # transformers' default, as the Qwen3 tokenizer's
    model = transformers.AutoModelForCausalLM.from_pretrained(chat_model_dir, torch_dtype=torch.float32).eval()
    return tok, model, sgj.load(chat_model_dir, dtype="float32")


def test_authors_reading_equals_their_trainer_loop(tiny):
    tok, model, lm = tiny
    pos, neg = texts(tok, 21)  # 42 prompts: batches of 16, 16 and 10
    ref = trainer_states(model, tok, pos, neg)
    pos_ids = [tok(t)["input_ids"] for t in pos]
    neg_ids = [tok(t)["input_ids"] for t in neg]
    ours_pos, ours_neg = authors_pair_states(lm, pos_ids, neg_ids)
    np.testing.assert_allclose(ours_pos, ref[0::2], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(ours_neg, ref[1::2], atol=1e-4, rtol=1e-4)
    vectors, _ = extract.extract(lm, pos_ids, neg_ids, read="authors")
    np.testing.assert_allclose(vectors, ref[0::2, 1:].mean(0) - ref[1::2, 1:].mean(0), atol=1e-4, rtol=1e-4)

    # most rows are read at a pad: only each batch's longest prompt is read at its own last token
    true_last = extract.last_token_states(lm, [p for pair in zip(pos_ids, neg_ids) for p in pair])
    lengths = [len(p) for pair in zip(pos_ids, neg_ids) for p in pair]
    longest = {i for s in range(0, 42, 16) for i in range(s, min(s + 16, 42))
               if lengths[i] == max(lengths[s:s + 16])}
    both = np.concatenate([ours_pos[:, None], ours_neg[:, None]], axis=1).reshape(42, *ours_pos.shape[1:])
    for i in range(42):
        same = np.allclose(both[i, 1:], true_last[i, 1:], atol=1e-4)
        assert same == (i in longest), i
    assert len(longest) < 10


def test_unknown_read_and_unpaired_inputs_are_refused(tiny):
    _, _, lm = tiny
    with pytest.raises(ValueError, match="read 'pad'"):
        extract.extract(lm, [[1, 2]], [[1]], read="pad")
    with pytest.raises(ValueError, match="contrast pairs"):
        authors_pair_states(lm, [[1, 2]], [[1], [2]])


@pytest.mark.skipif(not AUTHORS_SVEC.is_file(), reason=f"the authors' vector not found at {AUTHORS_SVEC}")
def test_svec_written_like_the_authors_file(tiny, tmp_path):
    """Same layout as their released Qwen3-8B file: {"model_type", "directions": {"0".."L-1": [D floats]}}, one
    key per block output (hidden_states[k + 1]); their values are all float16-representable (an fp16 run)."""
    tok, _, lm = tiny
    pos, neg = texts(tok, 4)
    vectors, _ = extract.extract(lm, [tok(t)["input_ids"] for t in pos], [tok(t)["input_ids"] for t in neg],
                                 read="authors")
    save_svec(tmp_path / "ours.svec", vectors, model_type="qwen3")
    ours, theirs = json.loads((tmp_path / "ours.svec").read_text()), json.loads(AUTHORS_SVEC.read_text())
    assert set(ours) == set(theirs) == {"model_type", "directions"} and theirs["model_type"] == ours["model_type"]
    assert list(theirs["directions"]) == [str(k) for k in range(36)]
    assert list(ours["directions"]) == [str(k) for k in range(lm.config.num_layers)]
    assert {len(v) for v in theirs["directions"].values()} == {4096}
    assert {len(v) for v in ours["directions"].values()} == {lm.config.hidden_size}
    assert load_svec(AUTHORS_SVEC, num_layers=36, hidden_size=4096)[0].shape == (36, 4096)
    raw = np.array([theirs["directions"][str(k)] for k in range(36)])
    assert np.array_equal(raw.astype(np.float16).astype(np.float64), raw)
    np.testing.assert_array_equal(load_svec(tmp_path / "ours.svec")[0], vectors)
