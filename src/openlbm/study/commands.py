"""``lbm study data-efficiency``: scratch vs fine-tuned at several demo counts, one resumable folder.

    lbm study data-efficiency --pretrained runs/pre --tasks ml45_test --counts 3 10 30 --out runs/study
    lbm study data-efficiency ... --shard 1/4          # this process's share (or under torchrun: one share per rank)
    lbm study data-efficiency --report-only --out DIR  # rebuild the report from DIR/bundle alone
    lbm study data-efficiency --report-only --out runs/study-ml45 --family runs/study-easy   # Holm over both splits
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

from openlbm.study.data_efficiency import StudyConfig


@dataclass(frozen=True)
class DataEfficiency(StudyConfig):
    """Measure what pretraining buys: for each demo count and training seed, train from scratch and fine-tune from
    the pretrained policy with the same demos, step rule and learning-rate grid (chosen by validation loss), evaluate
    both on the same initial states, and report the declared primary endpoint, paired intervals over seeds, and the
    data multiplier by non-inferiority (``out/report.html``; ``out/bundle`` rebuilds it). Re-run to continue;
    ``--shard i/n`` to split."""

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
