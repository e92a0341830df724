"""archbench: MetaFormer block grammar, published vision transformers, and honest measurement."""
from archbench.builder import build_model, make_spec
from archbench.models import create_model, list_models
from archbench.spec import ArchSpec, Options, StageSpec, StemSpec

__all__ = ["ArchSpec", "Options", "StageSpec", "StemSpec", "build_model", "create_model", "list_models",
           "make_spec"]
__version__ = "0.1.0"
