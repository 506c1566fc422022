"""Studies that compose training and evaluation (e.g. ``lbm study data-efficiency``)."""
