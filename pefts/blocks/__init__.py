"""Building blocks of the PEFT methods, one concern per file.

arch.py         the architecture table (`ARCHS`, keyed by HF model_type): layers, sublayers, linears,
                scaling targets, rotary, causal/encoder; `decoder_layers`, `sublayer`, `named_linears`
layout.py       the one soft-prompt layout: instruction masks, `insert_soft_positions`, positions
activations.py  the one activation table (`ACTIVATIONS`), IAPT's rational activation
poolers.py      poolers of the input-aware generators (and the shared `mean_pool`)
generators.py   generators (down, pool, act, up), `GeneratorBank` with cross-layer sharing
injectors.py    where generated tensors enter the backbone (soft prompts, scaling vectors)
common.py       new_param, freeze, any_weight
bottleneck.py   bottleneck adapters (sequential / parallel) and their hooks
vectors.py      BitFit / (IA)^3 vectors on linear outputs
prompts.py      the baselines' soft prompts as placeholder tokens (`PromptInserter`, `SoftPrompt`)
prefix.py       key/value prefixes inside attention (`PrefixKV`, `install_prefix_attention`)
"""
