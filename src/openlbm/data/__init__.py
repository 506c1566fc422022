"""openlbm.data: LeRobot v3 datasets (write, read, window, validate, stats) and weighted mixtures.

Modules: ``writer`` (DatasetWriter), ``dataset`` (RobotDataset, DatasetMeta), ``mixture`` (SourceConfig,
DataConfig, MixtureData), ``collate`` (collate_batch), ``stats``, ``validate``, ``video``, ``layout``, ``view``.
See docs/dataset.md.
"""
