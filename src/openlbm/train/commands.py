"""CLI commands of this package: each a frozen dataclass (docstring per field) with ``run() -> int``."""

COMMANDS: dict[str, type] = {}
