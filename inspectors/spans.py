"""Span taggers: the exact pieces of an answer a criterion objects to, found token by token.

Why: a no-pii or polite fix should change a few values or phrases of a real answer and keep every
other byte ("Her cell is 555-0142." → "Her cell is [PHONE]."; "Multiply by 9/5 and add 32,
genius." → without ", genius"). Asked to rewrite, the 135M aligner garbles long answers, and
cutting whole sentences (serve.cutting) loses the advice around the value (both hand-checked on
the dev set, docs/data.md). A tagger trained on spans people marked in real answers (data/spans/)
says which characters to replace or delete; nothing is generated, so nothing is invented.

Model: the squad backbone's hidden states, read as the hidden-probe inspector reads them (the
answer chat-rendered after its request, the model run up to the deepest of `layers` only, or
a squad's shared pass, inspectors.shared_reading), one
row per answer token: its own state and those of the next `lookahead` tokens (a causal state has
seen only what comes before it). A multinomial logistic regression over {O, span types} on
standardized rows scores each token. Runs of tokens whose P(span) = 1 − P(O) reaches the threshold become spans
(a one-token gap of "-", "." or a space inside a value is bridged), typed by their summed type
probabilities. The threshold maximises token F-beta on out-of-fold scores (folds group tokens by
answer), and the manifest reports those out-of-fold figures.

Evidence for an inspector (`evidence`): per answer, the highest P(span) of its tokens and the
mean of its three highest. Pooled hidden states dilute one phone number in a long answer; the
tagger, trained on marked tokens, does not (no-pii dev AUROC 0.964 for the top-3 mean alone
against the pooled probe's 0.945). The `hidden-probe` inspector appends them to its features
(`span_tagger`). An inspector learns its weights on answers the tagger may have learned from, where
the tagger looks better than it is, so the tagger keeps each training answer's *out-of-fold*
evidence (from the fold model that did not see it) and gives that for it: the stacking rule of
sklearn's `cross_val_predict`.

Artifacts are pickle-free: `tagger.safetensors` (scaler, weights, the out-of-fold evidence keyed
by the answers' hashes) and `manifest.json`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aligners.manifest import (
    ManifestError,
    checksums,
    confined,
    load_numpy_weights,
    read_manifest,
    save_numpy_weights,
    verify_checksums,
    write_manifest,
)
from aligners.models import model_id_and_hash, require_encoder
from inspectors.config import SpanTaggerConfig
from inspectors.embed_logreg import cached_rows
from inspectors.feature_store import item_hash
from inspectors.shared_reading import Reading, pair_state_batches
from inspectors.span_rules import (
    CUT,
    TRIM,
    Span,
    delete_span,
    joined,
    repeats,
    says_when,
    sentence_cuts,
    value_part,
    whole_names,
    whole_words,
    within_sentences,
)

KIND = "span-tagger"
FORMAT_VERSION = 1
WEIGHTS = "tagger.safetensors"
RETRAIN = "retrain it with `aligners train-tagger`"
OUTSIDE = "O"
_BRIDGE = set(" -./()")  # what may sit inside one value between two tagged tokens
EVIDENCE_TOP = 3  # the evidence's second column averages this many of the highest token scores


class SpanTagger:
    """Finds and rewrites the spans of answers a criterion objects to; see the module docstring.
    `fit(prompts, answers, spans)` / `find(prompts, answers)` / `apply(prompts, answers)`."""

    def __init__(self, config: SpanTaggerConfig | None = None, criterion: str | None = None):
        self.config = config or SpanTaggerConfig()
        self.criterion = criterion

    # -- features --
    def token_features(self, prompts: Sequence[str], answers: Sequence[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per answer: a (tokens, hidden × layers × (1 + lookahead)) feature matrix and the tokens'
        (start, end) character offsets in the answer."""
        cfg = self.config
        _, tok = self.reading.backbone()
        offsets = answer_offsets(tok, answers, cfg.max_answer_tokens)
        feats: list[np.ndarray] = [np.zeros((0, 0), dtype=np.float32)] * len(answers)
        for batch, states, _, answer in pair_state_batches(self.reading, prompts, answers, cfg.batch_tokens,
                                                           description=f"tagging answer tokens ({self.criterion})"):
            layers = np.concatenate([states[k].float().cpu().numpy() for k in cfg.layers], axis=-1)
            for row, i in enumerate(batch):
                h = layers[row][answer[row].numpy()][: len(offsets[i])]
                padded = np.vstack([h, np.zeros((cfg.lookahead, layers.shape[-1]), dtype=np.float32)])
                feats[i] = np.hstack([padded[k: k + len(h)] for k in range(cfg.lookahead + 1)])
        return feats, offsets

    @property
    def reading(self) -> Reading:
        """What this tagger reads of its encoder (inspectors.shared_reading)."""
        cfg = self.config
        return Reading(cfg.encoder, tuple(cfg.layers), cfg.max_prompt_tokens, cfg.max_answer_tokens, cfg.dtype,
                       cfg.device)

    def readings(self) -> list[Reading]:
        return [self.reading]

    # -- training --
    def fit(self, prompts: Sequence[str], answers: Sequence[str],
            spans: Sequence[Sequence[tuple[int, int, str]]]) -> SpanTagger:
        """Learn from answers with their marked (start, end, type) character spans (an empty
        list: an answer to leave alone)."""
        if not any(spans):
            raise ValueError("no marked spans to learn from")
        feats, offsets = self.token_features(prompts, answers)
        self.classes_ = [OUTSIDE, *sorted({t for ss in spans for _, _, t in ss})]
        labels = [token_labels(off, ss, self.classes_) for off, ss in zip(offsets, spans, strict=True)]
        oof = self._out_of_fold(feats, labels)
        p_span = [1.0 - proba[:, 0] for proba in oof]
        self.threshold_, self.metrics_ = choose_span_threshold(p_span, labels, self.config.threshold_beta)
        self.metrics_.update(self.span_figures(answers, offsets, oof, spans))
        self.oof_evidence_ = {item_hash([p, a]): answer_evidence(scores)
                              for p, a, scores in zip(prompts, answers, p_span, strict=True)}
        self.metrics_.update(n_answers=len(answers), n_with_spans=sum(1 for s in spans if s),
                             n_tokens=int(sum(len(y) for y in labels)))
        self._fit_model(np.vstack(feats), np.concatenate(labels))
        self.encoder_id_, self.encoder_hash_ = model_id_and_hash(self.config.encoder)
        return self

    def _fit_model(self, X: np.ndarray, y: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression

        self.mean_ = X.mean(0)
        self.scale_ = X.std(0) + 1e-6
        model = LogisticRegression(C=self.config.C, max_iter=self.config.max_iter)
        model.fit((X - self.mean_) / self.scale_, y)
        # a class absent from y gets no column; the weights keep every class's slot
        self.coef_ = np.zeros((len(self.classes_), X.shape[1]), dtype=np.float32)
        self.intercept_ = np.full(len(self.classes_), -1e4, dtype=np.float32)
        if len(model.classes_) == 2:  # sklearn's binary form: one row for the second class
            self.coef_[model.classes_[1]], self.intercept_[model.classes_[1]] = model.coef_[0], model.intercept_[0]
            self.intercept_[model.classes_[0]] = 0.0
        else:
            self.coef_[model.classes_], self.intercept_[model.classes_] = model.coef_, model.intercept_

    def _out_of_fold(self, feats: list[np.ndarray], labels: list[np.ndarray]) -> list[np.ndarray]:
        """Class probabilities per token of each answer from a model that did not see that answer."""
        folds, fold_of = fold_assignment(labels, self.config.cv_folds, self.config.random_state)
        out: list[np.ndarray] = [np.zeros(0)] * len(feats)
        for f in range(folds):
            train = [i for i in range(len(feats)) if fold_of[i] != f]
            self._fit_model(np.vstack([feats[i] for i in train]), np.concatenate([labels[i] for i in train]))
            for i in np.flatnonzero(fold_of == f):
                out[i] = self._proba(feats[i])
        return out

    def span_figures(self, answers: Sequence[str], offsets: list[np.ndarray], oof: list[np.ndarray],
                      marked: Sequence[Sequence[tuple[int, int, str]]]) -> dict[str, Any]:
        """Out-of-fold figures of the spans as `find` returns them (whole words, values_only): the
        marked spans at least half covered, the found spans that overlap a mark, the marked answers
        given a span that does not (a stray placeholder or deletion damages the answer), the
        marked answers with every mark found and no stray span (the most a member that only
        deletes or masks what the tagger finds could fix), and the good answers that would be
        changed."""
        n_marked = n_found = hits = n_spans = stray = exact = clean = clean_changed = 0
        for answer, off, proba, ss in zip(answers, offsets, oof, marked, strict=True):
            found = self._spans(answer, off, proba) if len(proba) else []
            if not ss:
                clean, clean_changed = clean + 1, clean_changed + bool(found)
                continue
            covered = np.zeros(len(answer) + 1, dtype=bool)
            for s in found:
                covered[s.start:s.end] = True
            found_marks = sum(1 for start, end, _ in ss if end > start and covered[start:end].mean() >= 0.5)
            n_marked, n_found = n_marked + len(ss), n_found + found_marks
            good = [any(s.start < end and s.end > start for start, end, _ in ss) for s in found]
            hits, n_spans, stray = hits + sum(good), n_spans + len(good), stray + (not all(good))
            exact += found_marks == len(ss) and all(good)
        return {
            "spans_found": round(n_found / max(1, n_marked), 4), "n_spans": n_marked,
            "span_precision": round(hits / max(1, n_spans), 4), "n_found_spans": n_spans,
            "marked_answers_with_stray_span": round(stray / max(1, len(marked) - clean), 4),
            "marked_answers_all_found_none_stray": round(exact / max(1, len(marked) - clean), 4),
            "clean_answers_changed": round(clean_changed / max(1, clean), 4), "n_clean_answers": clean,
        }

    # -- inference --
    def _proba(self, X: np.ndarray) -> np.ndarray:
        logits = ((X - self.mean_) / self.scale_) @ self.coef_.T + self.intercept_
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)

    def find(self, prompts: Sequence[str], answers: Sequence[str]) -> list[list[Span]]:
        """The spans of each answer, in order."""
        feats, offsets = self.token_features(prompts, answers)
        return [self._spans(a, off, self._proba(X)) if len(X) else []
                for a, off, X in zip(answers, offsets, feats, strict=True)]

    def _spans(self, answer: str, offsets: np.ndarray, proba: np.ndarray) -> list[Span]:
        on = (1.0 - proba[:, 0]) >= self.threshold_
        for t in range(1, len(on) - 1):  # bridge "555" "-" "0147"
            gap = answer[offsets[t][0]:offsets[t][1]]
            on[t] |= bool(on[t - 1] and on[t + 1] and gap and set(gap) <= _BRIDGE)
        spans: list[Span] = []
        for run in _runs(on):
            start, end = int(offsets[run.start][0]), int(offsets[run.stop - 1][1])
            while start < end and answer[start] in TRIM:
                start += 1
            while end > start and answer[end - 1] in TRIM:
                end -= 1
            if end > start:
                start, end = whole_words(answer, start, end)
                kind = self.classes_[1 + int(proba[run, 1:].sum(0).argmax())]
                if spans and start < spans[-1].end:  # two runs inside one word: one span
                    start = spans.pop().start
                spans.append(Span(start, end, kind))
        return self.shaped(answer, spans)

    def shaped(self, answer: str, spans: list[Span]) -> list[Span]:
        """The tagger's raw runs as the config's rules shape them (inspectors.span_rules): never
        across a sentence end, sentences with free text of `cut_sentence_types` cut whole, values
        only, names grown over the name words beside them, split values joined, repeats masked;
        no mask overlaps a cut."""
        cfg = self.config
        spans = within_sentences(answer, spans)
        cuts = sentence_cuts(answer, spans, cfg.cut_sentence_types) if cfg.cut_sentence_types else []
        if cfg.values_only:
            spans = [v for s in spans if (v := value_part(answer, s, cfg.name_types)) is not None]
        spans = joined(answer, whole_names(answer, spans, cfg.name_types))
        if cfg.mask_repeats:
            spans = repeats(answer, spans, cfg.name_types)
        outside = [s for s in spans if not any(s.start < c.end and c.start < s.end for c in cuts)]
        return sorted(outside + cuts, key=lambda s: s.start)

    def evidence(self, prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """(n, 2): per answer, the highest P(span) of its tokens and the mean of its
        EVIDENCE_TOP highest; out of fold for an answer the tagger learned from (module docstring).
        Rows are cached like an inspector's features (ALIGNERS_FEATURE_CACHE)."""
        pairs = list(zip(prompts, answers, strict=True))
        if not pairs:
            return np.zeros((0, 2), dtype=np.float32)
        key = (self.config.encoder, "span-evidence", self.fingerprint())
        return np.stack(cached_rows(key, pairs, self._evidence))

    def _evidence(self, pairs: list[tuple[str, str]]) -> list[np.ndarray]:
        rows = {i: self.oof_evidence_[h] for i, pa in enumerate(pairs)
                if (h := item_hash(list(pa))) in self.oof_evidence_}
        todo = [i for i in range(len(pairs)) if i not in rows]
        feats, _ = self.token_features([pairs[i][0] for i in todo], [pairs[i][1] for i in todo])
        for i, X in zip(todo, feats, strict=True):
            rows[i] = answer_evidence(1.0 - self._proba(X)[:, 0] if len(X) else np.zeros(0))
        return [rows[i] for i in range(len(pairs))]

    def fingerprint(self) -> str:
        """A content hash of the fitted model: cached evidence of another tagger is never reused.
        The threshold is left out: evidence reads probabilities, so a tagger retrained only for
        another threshold keeps its cached evidence."""
        import hashlib

        digest = hashlib.sha256()
        for part in (self.mean_, self.scale_, self.coef_, self.intercept_):
            digest.update(np.ascontiguousarray(part, dtype=np.float32).tobytes())
        return digest.hexdigest()[:16]

    def apply(self, prompts: Sequence[str], answers: Sequence[str]) -> list[str]:
        """Each answer with its spans replaced by placeholders or deleted (config.action)."""
        return [self.rewrite(a, spans) for a, spans in zip(answers, self.find(prompts, answers), strict=True)]

    def rewrite(self, answer: str, spans: Sequence[Span]) -> str:
        """`answer` with `spans` replaced or deleted (a sentence cut is always deleted; a span
        overlapping a later one, or one that only says when, `says_when`, is skipped); never
        empty (deleting everything would leave nothing to return, so the answer comes back as it
        was)."""
        original, edited_from = answer, len(answer)
        for span in sorted(spans, key=lambda s: -s.start):
            if span.end > edited_from:  # overlaps a span already changed: its offsets are stale
                continue
            if span.type != CUT and says_when(original, span):  # "8:15", "Saturday": nobody's
                continue
            edited_from = span.start
            if self.config.action == "replace" and span.type != CUT:
                text = self.config.placeholders.get(span.type, f"[{span.type.replace('_', ' ')}]")
                answer = answer[: span.start] + text + answer[span.end:]
            else:
                answer = delete_span(answer, span.start, span.end)
        return answer if answer.strip() else original

    # -- persistence --
    def save(self, path: Path | str, training_data: dict | None = None) -> Path:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {"mean": self.mean_.astype(np.float32), "scale": self.scale_.astype(np.float32),
                   "coef": self.coef_, "intercept": self.intercept_}
        if self.oof_evidence_:
            keys = list(self.oof_evidence_)
            tensors["oof_keys"] = np.frombuffer(bytes.fromhex("".join(keys)), dtype=np.uint8).reshape(len(keys), -1)
            tensors["oof_evidence"] = np.stack([self.oof_evidence_[k] for k in keys]).astype(np.float32)
        save_numpy_weights(out / WEIGHTS, tensors, {"kind": KIND, "format_version": str(FORMAT_VERSION)})
        write_manifest(out, {
            "kind": KIND, "format_version": FORMAT_VERSION, "criterion": self.criterion,
            "config": self.config.model_dump(), "classes": self.classes_,
            "threshold": float(self.threshold_), "metrics": self.metrics_,
            "encoder": {"id": self.encoder_id_, "hash": self.encoder_hash_},
            "training_data": training_data or {},
            "files": {"weights": WEIGHTS, "sha256": checksums(out, [out / WEIGHTS])},
        })
        return out


def load_span_tagger(path: Path | str) -> SpanTagger:
    """A saved tagger; refuses a damaged file, an unknown setting or another encoder's weights."""
    from pydantic import ValidationError

    path = Path(path)
    manifest = read_manifest(path, KIND, FORMAT_VERSION, hint=(
        "Train one with `aligners train-tagger --spans data/spans/no-pii.jsonl --out DIR`."))
    try:
        config = SpanTaggerConfig.model_validate(manifest["config"])
    except ValidationError as exc:
        raise ManifestError(f"{path}: the manifest's config is not one this aligners reads "
                            f"({exc.errors()[0]['msg']}); {RETRAIN}") from None
    verify_checksums(path, manifest["files"].get("sha256"), RETRAIN)
    require_encoder(path, config.encoder, manifest["encoder"], "tagger", RETRAIN)
    weights = confined(path, manifest["files"]["weights"])
    tensors = load_numpy_weights(weights, RETRAIN)
    tagger = SpanTagger(config, manifest.get("criterion"))
    tagger.mean_, tagger.scale_ = tensors["mean"], tensors["scale"]
    tagger.coef_, tagger.intercept_ = tensors["coef"], tensors["intercept"]
    tagger.classes_, tagger.threshold_ = list(manifest["classes"]), float(manifest["threshold"])
    tagger.oof_evidence_ = {bytes(k).hex(): e for k, e in
                            zip(tensors.get("oof_keys", []), tensors.get("oof_evidence", []), strict=True)}
    tagger.metrics_ = manifest.get("metrics", {})
    tagger.encoder_id_, tagger.encoder_hash_ = manifest["encoder"]["id"], manifest["encoder"]["hash"]
    tagger.manifest_ = manifest
    return tagger


def answer_evidence(p_span: np.ndarray) -> np.ndarray:
    """[max, mean of the EVIDENCE_TOP highest] of an answer's token P(span) (zeros: no tokens)."""
    top = np.sort(np.asarray(p_span, dtype=np.float32))[::-1][:EVIDENCE_TOP]
    return np.array([top[0], top.mean()] if len(top) else [0.0, 0.0], dtype=np.float32)


def answer_offsets(tok, answers: Sequence[str], max_tokens: int) -> list[np.ndarray]:
    """Each answer's first `max_tokens` tokens as (start, end) character offsets: the rows a
    tagger reads and labels."""
    return [np.asarray(tok(answer, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
                       [:max_tokens], dtype=np.int64).reshape(-1, 2) for answer in answers]


def fold_assignment(labels: Sequence[np.ndarray], cv_folds: int, seed: int) -> tuple[int, np.ndarray]:
    """(folds, each answer's fold) of the out-of-fold figures: answers dealt round a seeded
    permutation, no more folds than answers with a mark."""
    folds = min(cv_folds, sum(1 for y in labels if y.any()))
    if folds < 2:
        raise ValueError("need at least two answers with marked spans to choose a threshold")
    order = np.random.default_rng(seed).permutation(len(labels))
    fold_of = np.empty(len(labels), dtype=int)
    fold_of[order] = np.arange(len(labels)) % folds
    return folds, fold_of


def token_labels(offsets: np.ndarray, spans: Sequence[tuple[int, int, str]], classes: Sequence[str]) -> np.ndarray:
    """Class index per token: a span's type where the token's characters overlap the span, else
    0 (O)."""
    y = np.zeros(len(offsets), dtype=np.int64)
    a, b = offsets[:, 0], offsets[:, 1]
    for start, end, kind in spans:
        y[(a < end) & (b > start) & (b > a)] = classes.index(kind)
    return y


def choose_span_threshold(p_span: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                          beta: float) -> tuple[float, dict[str, Any]]:
    """The P(span) threshold maximising token F-beta, and the out-of-fold token precision and
    recall at it."""
    p, y = np.concatenate(p_span), np.concatenate(labels) > 0
    best = (-1.0, 0.5)
    for th in np.unique(np.round(p, 3)):
        hit = p >= th
        tp = float((hit & y).sum())
        prec, rec = tp / max(1.0, float(hit.sum())), tp / max(1.0, float(y.sum()))
        f = (1 + beta**2) * prec * rec / max(1e-9, beta**2 * prec + rec)
        best = max(best, (f, float(th)))
    hit = p >= best[1]
    tp = float((hit & y).sum())
    return best[1], {
        "threshold_beta": beta, "token_f_beta": round(best[0], 4),
        "token_precision": round(tp / max(1.0, float(hit.sum())), 4),
        "token_recall": round(tp / max(1.0, float(y.sum())), 4),
    }


def _runs(mask: np.ndarray) -> list[slice]:
    """The maximal runs of True in `mask`."""
    out, t = [], 0
    while t < len(mask):
        if mask[t]:
            u = t
            while u < len(mask) and mask[u]:
                u += 1
            out.append(slice(t, u))
            t = u
        else:
            t += 1
    return out

