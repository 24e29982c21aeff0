"""Building blocks of the input-aware PEFT family (pooler -> activation -> generator)."""
