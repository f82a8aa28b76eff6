# Two commands for a newcomer: `make demo` and `make test`. Everything else is a helper target.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
RETR := $(VENV)/bin/retr
DEMO_CORPUS ?= emoji-google
DEMO_MODEL ?= retr:default
DEMO_DIR ?= out/demo-$(DEMO_CORPUS)-$(subst :,-,$(DEMO_MODEL))
# Models load from installed packages; never reach for the Hugging Face hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup test lint demo demo-index demo-search serve ui bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	# clip-retrieval only for its ClipClient (tests/test_api.py): its own dependencies are a whole CLIP stack
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps clip-retrieval==2.45.0
	touch $@

setup: $(VENV)/.installed

lint: setup
	$(VENV)/bin/ruff check .

test: setup lint
	$(PY) -m pytest -q

demo-index: setup
	$(RETR) data fetch $(DEMO_CORPUS)
	$(RETR) index build $(DEMO_CORPUS) --out $(DEMO_DIR) --model $(DEMO_MODEL) --replace-stale

demo-search: demo-index
	$(RETR) search $(DEMO_DIR) --text "a red heart" -k 5
	$(RETR) search $(DEMO_DIR) --text "a cat" -k 5
	$(RETR) search $(DEMO_DIR) --text "a car" -k 5 --where "caption LIKE '%car%'"
	$(RETR) search $(DEMO_DIR) --image-id 0 -k 5 --target text

demo: demo-search
	@echo
	@echo "Next: the HTTP API on the demo index:  make serve   (then: curl -s localhost:8000/search -H 'content-type: application/json' -d '{\"text\": \"a red heart\", \"k\": 3}')"
	@echo "      the search UI on the demo index:  make ui      (then open http://127.0.0.1:8501)"

serve: demo-index
	$(RETR) serve $(DEMO_DIR)

ui: demo-index
	$(RETR) ui $(DEMO_DIR)

bench: setup
	$(PY) bench/bench_embed.py
	$(PY) bench/bench_index.py --n 20000 --dim 64

clean:
	rm -rf out .pytest_cache
