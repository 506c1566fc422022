"""``lbm quickstart``: generate demos -> train -> evaluate -> report, on a laptop. (Filled in by integration.)"""

COMMANDS: dict[str, type] = {}
