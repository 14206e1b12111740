"""syncd: persistent volumes for compute workflows, kept in object storage."""

from .config import Config
from .errors import SyncdError

__version__ = "0.1.0"
__all__ = ["Config", "SyncdError", "__version__"]
