"""Case files: the model (`model`), positions in TOML text (`positions`), schema errors in words
(`schema_errors`) and loading with every rule (`loading`). Import from here."""

from conformance.cases.loading import (
    MAX_TENSOR_ELEMENTS,
    NON_CASE_FILES,
    SCHEMA_PATH,
    build_case,
    case_files,
    load_file,
    load_paths,
)
from conformance.cases.model import Case, CaseData, CaseError, CaseFileError, LoadResult, materialize, tensor
from conformance.cases.positions import SourceLines, id_lines
from conformance.cases.schema_errors import explain_schema_error, field_path, strict_validator

__all__ = [
    "MAX_TENSOR_ELEMENTS",
    "NON_CASE_FILES",
    "SCHEMA_PATH",
    "Case",
    "CaseData",
    "CaseError",
    "CaseFileError",
    "LoadResult",
    "SourceLines",
    "build_case",
    "case_files",
    "explain_schema_error",
    "field_path",
    "id_lines",
    "load_file",
    "load_paths",
    "materialize",
    "strict_validator",
    "tensor",
]
