"""A causal LM's hidden states over chat-rendered (request, answer) pairs: what the hidden-probe
inspector pools and the span tagger reads token by token (one reading, two uses).

The model is cut to the deepest layer a reader needs and loaded once per process; answers are
batched by padded-token budget (`token_batches`), right-padded so positions match unpadded runs.
Readers go through inspectors.shared_reading, which can serve several of them from one pass.
"""

from __future__ import annotations

from collections.abc import Sequence

from inspectors.embed_logreg import token_batches

_BACKBONES: dict[tuple, tuple] = {}


def get_backbone(name: str, depth: int, device: str = "cpu", dtype: str = "float32"):
    """(model, tokenizer) of `name` keeping only its first `depth` decoder layers (the rest are
    never needed by a probe), loaded once per process."""
    key = (name, depth, device, dtype)
    if key not in _BACKBONES:
        import torch

        from aligners.models import load_causal_lm

        model, tok = load_causal_lm(name, dtype=dtype, device=device)
        body = model.model
        if depth > len(body.layers):
            raise ValueError(f"{name} has {len(body.layers)} layers; cannot probe layer {depth}")
        body.layers = body.layers[:depth]
        body.config.num_hidden_layers = depth
        # the model returns its last hidden state after the final norm; a probed layer must
        # look the same whether or not it is the deepest one, so drop the norm
        body.norm = torch.nn.Identity()
        _BACKBONES[key] = (body, tok)
    return _BACKBONES[key]


def chat_head(tokenizer, prompt: str, max_prompt: int) -> list[int]:
    """Token ids of the chat-rendered request up to where the assistant's answer begins (the
    request's end is kept)."""
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][-max_prompt:]
    head = tokenizer.apply_chat_template(
        [{"role": "user", "content": tokenizer.decode(p_ids)}],
        tokenize=False,
        add_generation_prompt=True,
    )
    return tokenizer(head, add_special_tokens=False)["input_ids"]


def encode_pairs(
    tokenizer, prompts: Sequence[str], answers: Sequence[str], max_prompt: int, max_answer: int
) -> tuple[list[list[int]], list[int]]:
    """Token ids of each chat-rendered (prompt, answer) and where its answer starts."""
    ids, starts = [], []
    for prompt, answer in zip(prompts, answers, strict=True):
        head_ids = chat_head(tokenizer, prompt, max_prompt)
        a_ids = tokenizer(answer, add_special_tokens=False)["input_ids"][:max_answer]
        if not a_ids:  # an empty answer still gets one position to pool
            a_ids = [tokenizer.eos_token_id]
        ids.append(head_ids + a_ids)
        starts.append(len(head_ids))
    return ids, starts


def padded_batch(tok, ids: list[list[int]], starts: list[int], batch: list[int]):
    """(input ids, attention mask, answer-token mask) of the `batch` rows, right-padded so
    positions match unpadded runs; tokens from `starts[i]` on are the answer."""
    import torch

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    longest = max(len(ids[i]) for i in batch)
    input_ids = torch.full((len(batch), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    answer = torch.zeros((len(batch), longest), dtype=torch.bool)
    for row, i in enumerate(batch):
        input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
        mask[row, : len(ids[i])] = 1
        answer[row, starts[i] : len(ids[i])] = True
    return input_ids, mask, answer


PROGRESS_MIN_BATCHES = 16  # work this long (training, benchmarks) shows a progress bar; serving does not


def hidden_state_batches(body, tok, ids: list[list[int]], starts: list[int], batch_tokens: int,
                         description: str = "reading hidden states"):
    """(batch indices, hidden states, attention mask, answer-token mask) per length-sorted batch
    of at most `batch_tokens` padded tokens; tokens from `starts[i]` on are the answer."""
    import torch

    batches = token_batches([len(x) for x in ids], batch_tokens)
    if len(batches) >= PROGRESS_MIN_BATCHES:
        from rich.progress import track

        batches = track(batches, description=description, transient=True)
    for batch in batches:
        input_ids, mask, answer = padded_batch(tok, ids, starts, batch)
        with torch.no_grad():
            states = body(
                input_ids=input_ids.to(body.device),
                attention_mask=mask.to(body.device),
                output_hidden_states=True,
                use_cache=False,  # one pass, no generation: a KV cache is only work and memory
            ).hidden_states
        yield batch, states, mask, answer
