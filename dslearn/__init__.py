"""dslearn — DeepSeek's ideas (LLM → V2 → V3 → R1) rebuilt small enough to run on a laptop CPU."""

__version__ = "0.1.0"

from .config import ConfigError, ModelConfig, get_preset, preset_names  # noqa: E402

__all__ = ["ConfigError", "ModelConfig", "__version__", "get_preset", "preset_names"]
