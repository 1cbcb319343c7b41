"""Lightning training plans for scdl's models (built on scvi-tools' plans), and the guard
every ``.train()`` runs inside (divergence, interruption)."""

from .. import _quiet_import  # noqa: F401  (first: importing scvi-tools re-seeds)
from ._annotator import AnnotatorTrainingPlan, MaskedExpressionPlan
from ._callbacks import TrainingDivergedError, TrainingGuard, guarded_training
from ._elbo import EpochLoggingTrainingPlan
from ._quiet import quiet_loggers

__all__ = [
    "AnnotatorTrainingPlan",
    "EpochLoggingTrainingPlan",
    "MaskedExpressionPlan",
    "TrainingDivergedError",
    "TrainingGuard",
    "guarded_training",
    "quiet_loggers",
]
