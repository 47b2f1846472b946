"""selfguard_jax: Self-Guard steering and SafeRemind reminders for reasoning models, in JAX/Flax."""

from selfguard_jax import sharding
from selfguard_jax.config import ModelConfig
from selfguard_jax.decode import GenerationOutput
from selfguard_jax.errors import CheckpointError, ConfigError
from selfguard_jax.extract import extract_mean_diff
from selfguard_jax.lm import LM, load
from selfguard_jax.policy import ExecutionPolicy
from selfguard_jax.reminder import Reminder, Thinking
from selfguard_jax.sharding import make_mesh
from selfguard_jax.spec import GenerationSpec, Sampling
from selfguard_jax.steering import Steering

__version__ = "0.1.0"
__all__ = ["LM", "CheckpointError", "ConfigError", "ExecutionPolicy", "GenerationOutput", "GenerationSpec", "ModelConfig", "Reminder",
           "Sampling", "Steering", "Thinking", "extract_mean_diff", "load", "make_mesh", "sharding", "__version__"]
