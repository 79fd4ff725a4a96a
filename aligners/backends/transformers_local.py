"""Local generation with transformers: one base model, many LoRA adapters (peft), batched.

All aligners of a squad are adapters on one shared base, so a squad costs one model in memory.
Requests are grouped by (adapter, sampling params) and run in left-padded batches; each batch
passes peft's `adapter_names`, which also allows mixed-adapter batches when callers want them.
`generate_with_states` also keeps chosen decoder layers' outputs for each answer, so inspectors
that read this same model need not run it again over what it just wrote.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from aligners.backends.base import (
    Backend,
    BackendError,
    Generation,
    GenerationRequest,
    PromptTooLong,
    SamplingParams,
    TokenStates,
    cancel_event,
    raise_if_cancelled,
    register_backend,
)
from aligners.config import TransformersBackendConfig
from aligners.models import load_causal_lm

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" inside `adapter_names`
SELF_TEST_PROMPT = "Question: Is this answer safe and polite?\nAnswer: Sure, here is what you asked for."


def _read_back_last(model, prompt_mask: torch.Tensor, out, adapter_names: list[str] | None) -> None:
    """One more decoding step that reads the last generated token back, so the forward hooks keep
    its states too (generation never feeds its final token to the model)."""
    sequences = out.sequences
    mask = torch.cat([prompt_mask, prompt_mask.new_ones((len(sequences), sequences.shape[1] - prompt_mask.shape[1]))], dim=1)
    cache_field = "cache" if hasattr(out, "cache") else "past_key_values"  # renamed in transformers 5
    model(input_ids=sequences[:, -1:], attention_mask=mask, position_ids=mask.long().cumsum(-1)[:, -1:] - 1,
          use_cache=True, **{cache_field: getattr(out, cache_field)},
          **({"adapter_names": adapter_names} if adapter_names else {}))


def _keeping(store: list):
    """A forward hook that keeps a decoder layer's output hidden states."""

    def hook(_module, _inputs, output):
        store.append((output[0] if isinstance(output, tuple) else output).detach())

    return hook


class AdapterSelfTestError(BackendError):
    """A loaded adapter that leaves the logits unchanged: it would silently do nothing."""


def render_prompt(tokenizer, request: GenerationRequest) -> str:
    if request.prompt is not None:
        return request.prompt
    messages = [m.model_dump() for m in request.messages]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Truncate at the earliest stop string (OpenAI semantics: the stop is not returned)."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def stop_when_set(event):
    """A transformers stopping criterion that ends every row once `event` is set, so a cancelled
    request frees the model within one decoding step instead of after max_tokens."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _StopWhenSet(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_StopWhenSet()])


@register_backend("transformers")
class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, cfg: TransformersBackendConfig | None = None, *, model=None, tokenizer=None):
        self.cfg = cfg or TransformersBackendConfig()
        if model is None:
            model, tokenizer = load_causal_lm(self.cfg.model, self.cfg.dtype, self.cfg.device)
        self.model = model
        self.tokenizer = tokenizer
        self.peft_model = None
        for adapter_name, path in self.cfg.adapters.items():
            self.load_adapter(adapter_name, path)

    # --- adapters ---------------------------------------------------------------------------

    def adapters(self) -> list[str]:
        return [] if self.peft_model is None else list(self.peft_model.peft_config)

    def load_adapter(self, name: str, path: str) -> None:
        """Load a LoRA adapter under `name` and, unless disabled, prove it changes the model."""
        from peft import PeftModel

        if name == BASE_ADAPTER or name in self.adapters():
            raise BackendError(f"adapter name {name!r} is reserved or already loaded")
        try:
            if self.peft_model is None:
                self.peft_model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
                self.peft_model.eval()
            else:
                self.peft_model.load_adapter(path, adapter_name=name)
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot load adapter {name!r} from {path}: {exc}") from exc
        if self.cfg.self_test:
            try:
                self.self_test(name)
            except AdapterSelfTestError:
                self._unload(name)
                raise

    def _unload(self, name: str) -> None:
        """Forget adapter `name`; with none left, return to the plain base model."""
        if self.adapters() == [name]:
            self.model = self.peft_model.unload()
            self.peft_model = None
        else:
            self.peft_model.delete_adapter(name)

    @torch.no_grad()
    def self_test(self, name: str, tolerance: float = 1e-6) -> float:
        """Max |Δlogit| between adapter `name` and the base model on a fixed prompt.

        Multi-LoRA stacks have shipped bugs where an adapter loaded fine but was never applied;
        a zero-initialised or mis-targeted adapter does the same. Either way: fail loudly.
        """
        enc = self.tokenizer([SELF_TEST_PROMPT] * 2, return_tensors="pt").to(self.model.device)
        logits = self.peft_model(**enc, adapter_names=[name, BASE_ADAPTER]).logits
        delta = (logits[0] - logits[1]).abs().max().item()
        if not delta > tolerance:
            raise AdapterSelfTestError(
                f"adapter {name!r} does not change the model's logits (max |Δ| = {delta:.2e}): "
                "it is untrained, targets modules the model lacks, or was not applied"
            )
        return delta

    # --- generation -------------------------------------------------------------------------

    @property
    def context_length(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    @property
    def states_model(self) -> tuple[str, str, str] | None:
        """A decoder with a `.model.layers` stack (Llama-style, SmolLM2's) can keep its layers' states."""
        stack = getattr(getattr(self.model, "model", None), "layers", None)
        return (self.cfg.model, self.cfg.dtype, self.cfg.device) if stack is not None else None

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        return self._generate(requests, ())[0]

    def generate_with_states(self, requests: Sequence[GenerationRequest],
                             layers: Sequence[int]) -> tuple[list[Generation], list[TokenStates | None]]:
        """Each answer's states at `layers`, kept by forward hooks on those decoder layers while
        it is generated (the request's from the first pass, each answer token's from the step
        that reads it back; one extra step reads back the last)."""
        depth = len(self.model.model.layers)
        if not layers or not all(1 <= k <= depth for k in layers):
            raise BackendError(f"layers must be within 1..{depth}, got {list(layers)}")
        return self._generate(requests, tuple(sorted(set(layers))))

    def _generate(self, requests: Sequence[GenerationRequest],
                  layers: tuple[int, ...]) -> tuple[list[Generation], list[TokenStates | None]]:
        known = set(self.adapters())
        for req in requests:
            if req.adapter is not None and req.adapter not in known:
                raise BackendError(
                    f"unknown adapter {req.adapter!r}; loaded adapters: {sorted(known) or 'none'}"
                )
        results: list[Generation | None] = [None] * len(requests)
        states: list[TokenStates | None] = [None] * len(requests)

        def group_key(i: int) -> tuple[str, str]:
            return (requests[i].adapter or BASE_ADAPTER, requests[i].params.model_dump_json())

        order = sorted(range(len(requests)), key=group_key)
        for _, members in itertools.groupby(order, key=group_key):
            members = list(members)
            for start in range(0, len(members), self.cfg.max_batch_size):
                raise_if_cancelled()
                chunk = members[start : start + self.cfg.max_batch_size]
                outs, kept = self._generate_batch([requests[i] for i in chunk], layers)
                for i, out, k in zip(chunk, outs, kept, strict=True):
                    results[i], states[i] = out, k
        return results, states  # type: ignore[return-value]

    @torch.no_grad()
    def _generate_batch(self, batch: list[GenerationRequest],
                        layers: tuple[int, ...]) -> tuple[list[Generation], list[TokenStates | None]]:
        params: SamplingParams = batch[0].params
        tok = self.tokenizer
        texts = [render_prompt(tok, r) for r in batch]
        tok.padding_side = "left"
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(self.model.device)
        context = self.context_length
        if context is not None and enc["input_ids"].shape[1] + params.max_tokens > context:
            raise PromptTooLong(int(enc["input_ids"].shape[1]), params.max_tokens, context)
        kwargs = {
            "max_new_tokens": params.max_tokens,
            "do_sample": params.temperature > 0,
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.eos_token_id,
        }
        if params.temperature > 0:
            kwargs.update(temperature=params.temperature, top_p=params.top_p)
        else:  # greedy: silence the model's sampling defaults
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs.update(stop_strings=params.stop, tokenizer=tok)
        if params.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = params.repetition_penalty
        if (event := cancel_event()) is not None:
            kwargs["stopping_criteria"] = stop_when_set(event)
        model = self.model
        if self.peft_model is not None:
            model = self.peft_model
            kwargs["adapter_names"] = [r.adapter or BASE_ADAPTER for r in batch]
        captured: dict[int, list[torch.Tensor]] = {k: [] for k in layers}
        hooks = [self.model.model.layers[k - 1].register_forward_hook(_keeping(captured[k])) for k in layers]
        try:
            with torch.random.fork_rng(devices=[]):
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                out = model.generate(**enc, **kwargs, return_dict_in_generate=bool(layers))
            if layers:
                _read_back_last(model, enc["attention_mask"], out, kwargs.get("adapter_names"))
                out = out.sequences
        finally:
            for hook in hooks:
                hook.remove()
        raise_if_cancelled()  # a cut-off answer is not an answer
        width = enc["input_ids"].shape[1]
        new_tokens = out[:, width:]
        read = {k: torch.cat(steps, dim=1) for k, steps in captured.items()}  # (batch, width + tokens read back, hidden)
        results, kept = [], []
        for b, (row, mask) in enumerate(zip(new_tokens, enc["attention_mask"], strict=True)):
            ids = row.tolist()
            while ids and ids[-1] == tok.pad_token_id != tok.eos_token_id:  # padding after a stop
                ids.pop()
            ended = tok.eos_token_id in ids
            if ended:
                ids = ids[: ids.index(tok.eos_token_id) + 1]
            text = tok.decode(ids, skip_special_tokens=True)
            text, stopped = cut_at_stop(text, params.stop)
            hit_limit = len(ids) >= params.max_tokens and not (ended or stopped)
            results.append(
                Generation(
                    text=text,
                    prompt_tokens=int(mask.sum()),
                    completion_tokens=len(ids),
                    finish_reason="length" if hit_limit else "stop",
                )
            )
            answer = ids[:-1] if ended else ids
            start = width - int(mask.sum())  # left padding
            kept.append(TokenStates(enc["input_ids"][b, start:].tolist() + answer,
                                    {k: h[b, start: width + len(answer)] for k, h in read.items()}) if read else None)
        return results, kept
