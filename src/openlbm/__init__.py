"""openlbm: Large Behavior Models — pretrain, fine-tune, evaluate and serve multitask visuomotor policies."""

__version__ = "0.1.0"
