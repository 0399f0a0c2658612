"""The MLflow model registry: log trained models, register the selected one, and gate the `champion` alias.

Each training step logs its model as an MLflow LoggedModel in its own run (`log_trained_model`), so a
registered version's source run is the run that trained it. `champion` moves to a new version only on
evidence; a version that is not promoted becomes the `challenger` (the newest one not promoted), and a
promoted one carries `champion` alone. The evidence: both models
classify the same target test images here, now, and the one-sided exact McNemar test on the images
where they disagree must give p < gate_alpha (and the gain must be at least gate_margin points); a
champion whose splits were cut with another seed may have trained on the test images and is not
compared (the new version stays challenger). A
worse, equal, merely luckier or failed run never moves it. Registering is idempotent per pipeline run
(a retried step finds its version), and the gate runs under a lease-based lock so that two runs
finishing together leave the better model as champion.

The package: `gate` (the paired comparison, the rule, the Registration record), `lock` (the lease),
`models` (LoggedModels and their requirements), `champion` (finding and exporting it) and `versions`
(register, rollback, the version table).
"""

from tlpipe.registry.champion import (champion_model, champion_version, export_champion, export_version,
                                      registered_version)
from tlpipe.registry.gate import GATE_TAG, VERDICT_TAG, Gate, PairedComparison, Registration, gate_evidence, mcnemar_p, paired_comparison
from tlpipe.registry.lock import LEASE_ENV, Lease, gate_lock
from tlpipe.registry.models import log_and_register, log_model, log_trained_model, logged_model, requirements
from tlpipe.registry.versions import LINEAGE_TAG, PREVIOUS_CHAMPION_TAG, SPLIT_SEED_TAG, register, rollback, versions

__all__ = ["GATE_TAG", "Gate", "LEASE_ENV", "LINEAGE_TAG", "Lease", "PREVIOUS_CHAMPION_TAG", "PairedComparison", "Registration", "SPLIT_SEED_TAG", "VERDICT_TAG",
           "champion_model",
           "champion_version", "export_champion", "export_version", "gate_evidence", "gate_lock", "log_and_register", "log_model", "log_trained_model",
           "logged_model", "mcnemar_p", "paired_comparison", "register", "registered_version", "requirements", "rollback",
           "versions"]
