# Two commands on a fresh machine:  `make quickstart`  and  `make test`.
# Both create ./.venv and install everything they need first.
PY ?= python3
VENV ?= .venv
# A CPU build of torch that lies on this kind of machine's disk. GPU users: `make TORCH_SPEC="torch" ...`
# after installing their CUDA torch, or set TORCH_SPEC to the build they want.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install system-deps test test-all quickstart lint

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[sim,lang,dev,convert]"
	touch $@

install: $(BIN)/.installed

# Headless rendering (Mesa EGL), and Chromium for the HTML-report browser test. Needs root + apt; skipped otherwise.
system-deps:
	@if ! command -v chromium >/dev/null 2>&1 || ! ldconfig -p | grep -q libEGL_mesa; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				libegl1 libegl-mesa0 libgl1-mesa-dri libgles2 libosmesa6 chromium >/dev/null; \
		else echo "note: install libegl-mesa0 libgl1-mesa-dri chromium for rendering + report tests"; fi; \
	fi

test: install system-deps
	$(BIN)/python -m pytest -q

test-all: install system-deps
	$(BIN)/python -m pytest -q -m ""

lint: install
	$(BIN)/ruff check src tests bench

quickstart: install system-deps
	$(BIN)/lbm quickstart
