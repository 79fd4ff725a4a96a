"""`embed-logreg`: frozen MiniLM sentence embeddings + logistic regression (the default inspector).

The prompt is embedded whole (unit-norm 384-d MiniLM vector p). The answer is split into
sentences (and lines, so list items count) and each sentence is embedded; with
`answer_embedding="sentences"` (default) the answer vector a is the re-normalized mean of its
sentence vectors, with `"whole"` the answer is embedded as one text. The feature vector
concatenates the blocks named in `features`:

- `prompt`  p       — what was asked. No label on its own in pair data (a harmful prompt comes with
  both a misaligned and an aligned answer), but as an additive term it lets the model shift its
  decision by request: step-by-step help is fine for "bake bread", not for "pick a lock";
- `answer`  a       — what the answer is about overall: compliance, refusal, the kind of content;
- `product` p * a   — per-dimension agreement of question and answer, so a linear model can express
  interactions such as "compliance *given* a harmful request";
- `absdiff` |p - a| — how far the answer moved from the question (a refusal or a rant sits far
  from the request's topic);
- `sentence_max`, `sentence_min` — element-wise max / min over the sentence vectors. A violation
  is often ONE sentence ("Seriously? Even a child knows this.", a phone number, one harmful step)
  inside an otherwise fine answer; a whole-answer or mean embedding dilutes it, the extremes keep it.

Why this default: measured on the seed sets' *validation* splits (topic-disjoint, seed 0; the
test split never chose anything; `benchmarks/inspector_quality.py --grid` prints the grid),
validation AUROC harmless / polite / no-pii, all at C=0.1:

    answer = whole text:   [answer]                                0.938 / 0.826 / 1.000
                           [prompt, answer, product, absdiff]      0.959 / 0.832 / 0.998
                           [answer, sentence_max, sentence_min]    0.969 / 0.981 / 1.000
                           all six blocks                          0.988 / 0.971 / 1.000
    answer = sentence mean: [prompt, answer, product, absdiff]     0.989 / 0.957 / 0.998
                           all six blocks                          0.992 / 0.977 / 0.998  <- default

Sentence pooling turned `polite` (tone is local; both answers state the same facts) from unusable
into good, and the prompt-interaction blocks carry `harmless`, where the same content is right or
wrong depending on the request. The default has the best worst case, and using the sentence mean
as a means each answer token is encoded once, not twice. (no-pii's validation split has only 8
misaligned answers, so its column barely discriminates.)

The linear model, calibration and persistence are `inspectors.linear.LinearInspector`'s.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from inspectors.linear import LinearInspector

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

FEATURES = ("prompt", "answer", "product", "absdiff", "sentence_max", "sentence_min")
DEFAULT_FEATURES = FEATURES
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_ENCODERS: dict[tuple[str, str, str], SentenceTransformer] = {}


def split_sentences(text: str) -> list[str]:
    """Sentences and lines of `text`; fragments with fewer than 3 letters ("1.", "-") are joined to
    the next piece, so list markers do not become sentences of their own."""
    pieces, carry = [], ""
    for raw in _SENTENCE_END.split(text):
        piece = (carry + " " + raw).strip() if carry else raw.strip()
        if not piece:
            continue
        if sum(ch.isalpha() for ch in piece) < 3:
            carry = piece
            continue
        pieces.append(piece)
        carry = ""
    if carry:
        if pieces:
            pieces[-1] = f"{pieces[-1]} {carry}"
        else:
            pieces.append(carry)
    return pieces or [text]


def get_encoder(name: str, device: str = "cpu", dtype: str = "float32") -> SentenceTransformer:
    """Load a sentence encoder once per process (clones and reloaded inspectors share it).

    `dtype="bfloat16"` is ~2.7x faster on CPUs with AVX512-BF16/AMX (measured here: 108 vs 40
    answers/s; embeddings keep cosine >= 0.996 to float32); on CPUs without bf16 units it is
    slower, so float32 is the default.
    """
    key = (name, device, dtype)
    if key not in _ENCODERS:
        import torch

        from aligners.models import load_sentence_encoder

        encoder = load_sentence_encoder(name, device=device)
        if dtype != "float32":
            encoder = encoder.to(getattr(torch, dtype))
        _ENCODERS[key] = encoder
    return _ENCODERS[key]


# Recently computed feature rows — MiniLM embeddings per (encoder, device, dtype, max_seq_length),
# hidden-probe features per (prompt, answer) — so refitting on the same data (another C,
# calibration or threshold target; the validation split scored twice) skips the model. Bounded LRU
# (~1.5 KB per 384-d text); scoring a stream of new answers just cycles through it.
EMBEDDING_CACHE_SIZE = 20_000
_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()


def clear_embedding_cache() -> None:
    _CACHE.clear()


def token_batches(
    lengths: Sequence[int], tokens_per_batch: int, max_padding: float = 0.5
) -> list[list[int]]:
    """Group indices by length into batches of at most `tokens_per_batch` padded tokens, where
    padding is at most `max_padding` of the batch (so short prompts are not padded to the length
    of the answers sorted next to them).

    A fixed number of texts per batch is wrong for this model: 64 sentences of ~25 tokens make
    small matrix products that ran ~2x slower per token than 64 answers of ~120 tokens on 2 CPU
    cores (measured), while 512 long texts would need GBs of attention memory. A token budget
    keeps every forward pass near the efficient size.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0  # unpadded tokens in `current`
    for i in order:  # ascending, so text i is the longest of the batch it would join
        padded = (len(current) + 1) * lengths[i]
        if current and (
            padded > tokens_per_batch or padded - real - lengths[i] > max_padding * padded
        ):
            batches.append(current)
            current, real = [], 0
        current.append(i)
        real += lengths[i]
    if current:
        batches.append(current)
    return batches


def cached_rows(cache_key: tuple, items: Sequence, compute) -> list[np.ndarray]:
    """A feature row per item (a text, a (prompt, answer) pair...), computing with
    `compute(missing_items) -> rows` only the unique items neither in the shared LRU nor in the
    on-disk store (inspectors.feature_store, when enabled) under `cache_key`, whose first element
    names the encoder (an empty key disables both)."""
    from inspectors.feature_store import store_for

    unique = list(dict.fromkeys(items))
    found = {x: _CACHE[(cache_key, x)] for x in unique if cache_key and (cache_key, x) in _CACHE}
    todo = [x for x in unique if x not in found]
    store = store_for(cache_key) if todo else None
    if store is not None:
        on_disk = store.get(todo)
        found.update({todo[i]: row for i, row in on_disk.items()})
        todo = [x for i, x in enumerate(todo) if i not in on_disk]
    if todo:
        rows = compute(todo)
        if store is not None:
            store.put(todo, rows)
        for x, row in zip(todo, rows, strict=True):
            found[x] = row
            if cache_key and EMBEDDING_CACHE_SIZE:
                _CACHE[(cache_key, x)] = row
        while len(_CACHE) > EMBEDDING_CACHE_SIZE:
            _CACHE.popitem(last=False)
    if cache_key:
        for x in unique:
            if (cache_key, x) in _CACHE:
                _CACHE.move_to_end((cache_key, x))
    return [found[x] for x in items]


def embed(
    encoder: SentenceTransformer,
    texts: Sequence[str],
    tokens_per_batch: int = 16384,
    max_seq_length: int = 256,
    cache_key: tuple = (),
) -> np.ndarray:
    """Unit-norm float32 embeddings; duplicate and recently seen texts are embedded once."""

    def compute(todo: list[str]) -> list[np.ndarray]:
        encoder.max_seq_length = max_seq_length
        ids = encoder.tokenizer(todo, truncation=True, max_length=max_seq_length)["input_ids"]
        out: list = [None] * len(todo)
        for batch in token_batches([len(x) for x in ids], tokens_per_batch):
            vecs = encoder.encode(
                [todo[i] for i in batch],
                batch_size=len(batch),
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            for i, v in zip(batch, np.asarray(vecs, dtype=np.float32), strict=True):
                out[i] = v
        return out

    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack(cached_rows(cache_key, texts, compute))


class EmbedLogRegInspector(LinearInspector):
    """Frozen sentence embeddings + logistic regression; see the module docstring.

    Parameters are those of `inspectors.config.EmbedLogRegConfig` plus `criterion`.
    """

    type: ClassVar[str] = "embed-logreg"

    def __init__(
        self,
        encoder: str = "minilm-l6",
        features: Sequence[str] = DEFAULT_FEATURES,
        answer_embedding: str = "sentences",
        C: float = 0.1,
        max_iter: int = 2000,
        cv_folds: int = 5,
        request_gate: bool = False,
        request_gate_C: float = 1.0,
        request_guard: float | None = None,
        answer_model_on: str = "all",
        encode_batch_tokens: int = 16384,
        max_seq_length: int = 256,
        dtype: str = "float32",
        calibration: str = "sigmoid",
        threshold_target: str = "recall",
        threshold_value: float = 0.95,
        random_state: int = 0,
        device: str = "cpu",
        criterion: str | None = None,
    ):
        self.encoder = encoder
        self.features = features
        self.answer_embedding = answer_embedding
        self.C = C
        self.max_iter = max_iter
        self.cv_folds = cv_folds
        self.request_gate = request_gate
        self.request_gate_C = request_gate_C
        self.request_guard = request_guard
        self.answer_model_on = answer_model_on
        self.encode_batch_tokens = encode_batch_tokens
        self.max_seq_length = max_seq_length
        self.dtype = dtype
        self.calibration = calibration
        self.threshold_target = threshold_target
        self.threshold_value = threshold_value
        self.random_state = random_state
        self.device = device
        self.criterion = criterion

    # -- features --
    def _embed(self, texts: list[str]) -> np.ndarray:
        return embed(
            get_encoder(self.encoder, self.device, self.dtype),
            texts,
            tokens_per_batch=self.encode_batch_tokens,
            max_seq_length=self.max_seq_length,
            cache_key=(self.encoder, self.device, self.dtype, self.max_seq_length),
        )

    def request_features(self, prompts: Sequence[str]) -> np.ndarray:
        """The prompt's embedding (the `prompt` block)."""
        return self._embed(list(prompts))

    def featurize(self, prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """The feature matrix (n, 384 * len(features)) fed to the linear model."""
        bad = [f for f in self.features if f not in FEATURES]
        if bad or not self.features:
            raise ValueError(f"unknown features {bad}; choose from {list(FEATURES)}")
        if self.answer_embedding not in ("sentences", "whole"):
            raise ValueError(
                f"answer_embedding must be 'sentences' or 'whole', got {self.answer_embedding!r}"
            )
        n = len(prompts)
        need_sentences = self.answer_embedding == "sentences" or {
            "sentence_max",
            "sentence_min",
        } & set(self.features)
        sentences = [split_sentences(a) for a in answers] if need_sentences else []
        texts = list(prompts) + (list(answers) if self.answer_embedding == "whole" else [])
        texts += [s for group in sentences for s in group]
        vecs = self._embed(texts)
        p = vecs[:n]
        dim = vecs.shape[1]
        s_max = s_min = s_mean = np.zeros((n, dim), dtype=np.float32)
        if need_sentences:
            s_vecs = vecs[len(texts) - sum(len(g) for g in sentences) :]
            counts = np.array([len(g) for g in sentences])
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            s_max = np.maximum.reduceat(s_vecs, starts, axis=0)
            s_min = np.minimum.reduceat(s_vecs, starts, axis=0)
            s_mean = np.add.reduceat(s_vecs, starts, axis=0) / counts[:, None]
            s_mean /= np.maximum(np.linalg.norm(s_mean, axis=1, keepdims=True), 1e-12)
        a = vecs[n : 2 * n] if self.answer_embedding == "whole" else s_mean.astype(np.float32)
        blocks = {
            "prompt": lambda: p,
            "answer": lambda: a,
            "product": lambda: p * a,
            "absdiff": lambda: np.abs(p - a),
            "sentence_max": lambda: s_max,
            "sentence_min": lambda: s_min,
        }
        return np.hstack([blocks[f]() for f in self.features])
