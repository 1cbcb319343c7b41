"""Lightning training plans for scdl's models (built on scvi-tools' plans)."""

from ._annotator import AnnotatorTrainingPlan, MaskedExpressionPlan
from ._elbo import EpochLoggingTrainingPlan

__all__ = ["AnnotatorTrainingPlan", "EpochLoggingTrainingPlan", "MaskedExpressionPlan"]
