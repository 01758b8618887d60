"""RL from verifiable rewards (DeepSeek-R1, DeepSeekMath): tasks, checkers, a sandbox for code, GRPO's loss."""

from .grpo import LOSS_TYPES, group_advantages, grpo_loss, per_token_kl, reinforce_loss
from .rewards import accuracy_reward, extract_answer, format_reward, parse_response, total_reward
from .safe_eval import UnsafeExpression, safe_eval
from .sandbox import Limits, SandboxResult, run_code, sandbox_mode
from .tasks import Problem, arithmetic, code, countdown

__all__ = [
    "LOSS_TYPES", "Limits", "Problem", "SandboxResult", "UnsafeExpression", "accuracy_reward", "arithmetic", "code",
    "countdown", "extract_answer", "format_reward", "group_advantages", "grpo_loss", "parse_response",
    "per_token_kl", "reinforce_loss", "run_code", "safe_eval", "sandbox_mode", "total_reward",
]
