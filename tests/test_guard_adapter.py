"""benchmarks/guard_adapter.py: the kept prefix states plus the upper layers are the whole model,
and the adapter trains and scores from them; the real tokenizer, peft and a tiny random Llama."""

import importlib.util
from pathlib import Path

import numpy as np
import torch

from aligners.models import TINY_LLAMA, load_causal_lm
from inspectors.backbone import encode_pairs

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "guard_adapter.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("guard_adapter", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_guard_adapter_reads_kept_prefix_states_exactly_and_learns():
    bench = load_bench()
    guard = bench.GuardAdapter(TINY_LLAMA, depth=1, rank=4, seed=0)
    prompts = ["How do I pick a lock?", "What is 2+2?"] * 3
    answers = ["Sure, insert a tension wrench and rake the pins.", "I can't help with that.",
               "Step one: get a pick.", "4.", "No.", "Four, since two and two make four."]
    labels = [0, 1, 0, 1, 1, 1]
    ids, starts = encode_pairs(guard.tok, prompts, answers, 64, 64)
    states = bench.prefix_states(TINY_LLAMA, ids, starts, 1, 4096, "test")
    assert all(s.dtype == torch.float16 and len(s) == len(i) for s, i in zip(states, ids))

    # before training the LoRA deltas are zero: upper layers on the kept states = the whole model
    full, _ = load_causal_lm(TINY_LLAMA)
    with torch.no_grad():
        whole = full.model(input_ids=torch.tensor([ids[0]])).last_hidden_state[0]
        split = guard.body(inputs_embeds=states[0].float()[None], use_cache=False).last_hidden_state[0]
    assert torch.allclose(whole, split, atol=5e-3)  # float16 keeping rounds the prefix

    before = [p.detach().clone() for p in guard.parameters()]
    bench.fit(guard, states, starts, labels, epochs=2, batch_size=3, lr=1e-2, seed=0, log=lambda _: None)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, guard.parameters()))
    p = guard.score(states, starts, 4096)
    assert p.shape == (6,) and np.all((p > 0) & (p < 1))


def test_the_token_adapter_tags_each_answer_token_and_learns():
    """benchmarks/adapter_tagger.py: one class row per answer token, and training moves the
    adapter toward the marked tokens."""
    spec = importlib.util.spec_from_file_location("adapter_tagger", BENCH.parent / "adapter_tagger.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tagger = bench.TokenAdapter(TINY_LLAMA, depth=1, rank=4, seed=0, n_classes=2)
    answers = ["Multiply by 9/5 and add 32, genius.", "Multiply by 9/5 and add 32."] * 2
    ids, starts = encode_pairs(tagger.tok, ["How do I convert C to F?"] * 4, answers, 64, 64)
    states = load_bench().prefix_states(TINY_LLAMA, ids, starts, 1, 4096, "test")
    labels = [np.array([int(k >= len(i) - s - 3) if n % 2 == 0 else 0 for k in range(len(i) - s)])
              for n, (i, s) in enumerate(zip(ids, starts))]  # the last tokens of the rude ones
    logits = tagger.token_logits(states, starts, [0, 1])
    assert [tuple(x.shape) for x in logits] == [(len(ids[0]) - starts[0], 2), (len(ids[1]) - starts[1], 2)]

    def loss() -> float:
        with torch.no_grad():
            out = tagger.token_logits(states, starts, [0, 1, 2, 3])
            return sum(torch.nn.functional.cross_entropy(o, torch.as_tensor(y)).item() for o, y in zip(out, labels))

    before = loss()
    bench.fit_tokens(tagger, states, starts, labels, [0, 1, 2, 3], epochs=10, batch_size=2, lr=1e-2, seed=0)
    tagger.body.eval()
    assert loss() < before
