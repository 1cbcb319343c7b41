"""Model-agnostic helpers: input checks shared by every ``setup_anndata``, gene alignment,
normalisation, group resolution and gene ranking."""

from ._checks import (
    CountSummary,
    check_bool,
    check_categorical,
    check_count_setup,
    check_counts,
    check_embedding,
    check_fraction,
    check_is_anndata,
    check_key_added,
    check_non_negative,
    check_obs_key,
    check_positive_int,
    check_positive_number,
    check_random_state,
    check_unique_var_names,
    get_matrix,
    warn_empty_cells,
)
from ._csr import CSRTensors, gather_counts, inference_batch_size, sparse_tensors_on
from ._drug_checks import (
    MIN_LINES_PER_DRUG,
    MIN_SHARED_GENES,
    check_profiles,
    check_response,
    guess_modality,
    looks_like_counts,
    resolve_drugs,
    resolve_modality,
    shared_genes,
)
from ._drug_inputs import (
    matched_reference,
    profiles_from_counts,
    profiles_from_expression,
    select_model_genes,
)
from ._genes import (
    LOW_GENE_OVERLAP,
    align_to_genes,
    gene_columns,
    gene_mismatch_message,
    same_gene_names,
)
from ._groups import resolve_groups, warn_if_batch_nested
from ._lognorm import input_kind, normalised_from_log1p
from ._normalize import log_normalize_counts
from ._pca import unintegrated_pca
from ._query import check_category_kind, check_query, counts_place_fix, edited_obs_columns
from ._salient_genes import salient_gene_table
from ._write import writable, write_h5ad_atomic

__all__ = [
    "LOW_GENE_OVERLAP",
    "MIN_LINES_PER_DRUG",
    "MIN_SHARED_GENES",
    "CSRTensors",
    "CountSummary",
    "align_to_genes",
    "gather_counts",
    "sparse_tensors_on",
    "gene_columns",
    "gene_mismatch_message",
    "same_gene_names",
    "inference_batch_size",
    "check_bool",
    "check_categorical",
    "check_count_setup",
    "check_counts",
    "check_embedding",
    "check_fraction",
    "check_profiles",
    "check_response",
    "check_is_anndata",
    "check_key_added",
    "check_non_negative",
    "check_obs_key",
    "check_positive_int",
    "check_positive_number",
    "check_random_state",
    "warn_empty_cells",
    "check_query",
    "edited_obs_columns",
    "counts_place_fix",
    "check_category_kind",
    "check_unique_var_names",
    "get_matrix",
    "guess_modality",
    "resolve_modality",
    "input_kind",
    "normalised_from_log1p",
    "log_normalize_counts",
    "looks_like_counts",
    "matched_reference",
    "profiles_from_counts",
    "profiles_from_expression",
    "resolve_drugs",
    "select_model_genes",
    "shared_genes",
    "resolve_groups",
    "warn_if_batch_nested",
    "salient_gene_table",
    "unintegrated_pca",
    "writable",
    "write_h5ad_atomic",
]
