"""The export form (one owner): its configuration, writing and loading export folders, the Hub."""

from .config import CONFIG_FILE, FORMAT_VERSION, RESTORER_FILE, ExportConfig
from .folder import (
    ADAPTER_FILES,
    BASE_TRANSFORMER_FILE,
    BASE_VAE_FILE,
    ENCODER_FILE,
    MERGED_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_VAE_FILE,
    TRANSFORMER_FILE,
    bundle_base,
    copy_export,
    export_files,
    find_export,
    save_weights,
    write_export,
    write_tokenizer_export,
)
from .hub import publish, render_card, validate_card
from .loading import ExportParts, export_dir, load_export
from .release import import_release

__all__ = [
    "ADAPTER_FILES",
    "BASE_TRANSFORMER_FILE",
    "BASE_VAE_FILE",
    "CONFIG_FILE",
    "ENCODER_FILE",
    "FORMAT_VERSION",
    "MERGED_FILE",
    "RESTORER_FILE",
    "TOKENIZER_CONFIG_FILE",
    "TOKENIZER_VAE_FILE",
    "TRANSFORMER_FILE",
    "ExportConfig",
    "ExportParts",
    "bundle_base",
    "copy_export",
    "export_dir",
    "export_files",
    "find_export",
    "import_release",
    "load_export",
    "publish",
    "render_card",
    "save_weights",
    "validate_card",
    "write_export",
    "write_tokenizer_export",
]
