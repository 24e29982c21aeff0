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
    source: str = "hub"  # tiny | gguf | hub
    hub_id: str | None = None
    gguf_package: str | None = None
    architecture: str = "llama"
    hidden_size: int = 0
    num_hidden_layers: int = 0
    num_attention_heads: int = 0
    num_key_value_heads: int | None = None
    intermediate_size: int = 0
    vocab_size: int = 0
    tie_word_embeddings: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # other config kwargs (e.g. head_dim)


@dataclass
class RunnerConfig:
    name: str = "???"
    lr: float = 1e-4
    max_epochs: float = 10
    max_steps: int = -1
    batch_size: int | None = None
    micro_batch_size: int = 16
    small_task_threshold: int = 10_000
    small_batch_size: int = 16
    large_batch_size: int = 128
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0
    scheduler: str = "linear"
    eval_steps: int = 200
    patience: int = 10
    max_seq_len: int = 2048
    num_beams: int = 3
    eval_batch_size: int = 16
    dev_generation: bool = True
    zero_shot: bool = False
    max_train_examples: int | None = None
    max_dev_examples: int | None = None
    max_test_examples: int | None = None
    device: str = "auto"
    dtype: str = "float32"
    deepspeed: str | None = None
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    save_peft: bool = True
    num_threads: int | None = None
    cache_dir: str = "${oc.env:HARNESS_CACHE,${oc.env:HOME}/.cache/peft-harness}"


@dataclass
class LoggerConfig:
    name: str = "none"
    project: str = "peft-harness"
    mode: str = "disabled"  # auto | online | offline | disabled
    dir: str = "outputs"  # W&B writes <dir>/wandb/<run>


@dataclass
class RunConfig:
    backbone: Any = None
    method: Any = None
    task: Any = None
    runner: Any = None
    logger: Any = None
    experiment: Any = None
    seed: int = 0
    data_dir: str | None = None
    variant: str | None = None
    force: bool = False
    results_dir: str = "results/runs"
    print_table: bool = True


def register_schemas() -> None:
    cs = ConfigStore.instance()
    cs.store(name="schema_run", node=RunConfig)
    cs.store(group="schema", name="backbone", node=BackboneConfig)
    cs.store(group="schema", name="runner", node=RunnerConfig)
    cs.store(group="schema", name="logger", node=LoggerConfig)


register_schemas()
