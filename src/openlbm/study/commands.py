"""``lbm study data-efficiency``: scratch vs fine-tuned at several demo counts, one resumable folder.

    lbm study data-efficiency --pretrained runs/pre --tasks ml45_test --counts 3 10 30 --seeds 0 1 --out runs/study
    lbm study data-efficiency ... --shard 1/4          # this process's share (or under torchrun: one share per rank)
    lbm study data-efficiency ... --report-only        # rewrite the report from the finished runs
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

from openlbm.study.data_efficiency import StudyConfig


@dataclass(frozen=True)
class DataEfficiency(StudyConfig):
    """Measure what pretraining buys: for each demo count, train from scratch and fine-tune from the pretrained
    policy with the same steps and demos, evaluate both on the same initial states, and report success vs demos,
    paired tests and the data multiplier (``out/report.html``). Re-run to continue; ``--shard i/n`` to split."""

    verbose: bool = False
    """Debug-level logging."""

    def run(self) -> int:
        from openlbm.study.data_efficiency import run_study

        logging.basicConfig(level=logging.DEBUG if self.verbose else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s")
        cfg = StudyConfig(**{f.name: getattr(self, f.name) for f in fields(StudyConfig)})
        report = run_study(cfg)  # a user's mistake (ValueError, missing file) is one line from openlbm.cli.main
        print(f"report: {report}")
        return 0


COMMANDS: dict[str, type] = {"data-efficiency": DataEfficiency}
