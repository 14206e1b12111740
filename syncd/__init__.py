"""syncd: persistent volumes for compute workflows, kept in object storage."""

from .config import Config
from .errors import SyncdError
from .sdk import Volume, list_volumes, volume

__version__ = "0.1.0"
__all__ = ["Config", "SyncdError", "Volume", "__version__", "list_volumes", "volume"]
