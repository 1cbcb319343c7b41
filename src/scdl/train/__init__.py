"""Lightning training plans for scdl's models (built on scvi-tools' plans)."""

from ._annotator import AnnotatorTrainingPlan, MaskedExpressionPlan

__all__ = ["AnnotatorTrainingPlan", "MaskedExpressionPlan"]
