"""The ground floor: the registry, the user-error type, the config schemas and `compose(overrides)`.

Imports nothing of the project's own; `pefts/` and `tasks/` build on it, `runners/` and `scripts/` above.
"""
