"""RL from verifiable rewards (DeepSeek-R1, DeepSeekMath): tasks, checkers, and (to come) GRPO."""

from .rewards import accuracy_reward, extract_answer, format_reward, parse_response, total_reward
from .safe_eval import UnsafeExpression, safe_eval
from .tasks import Problem, arithmetic, countdown

__all__ = ["Problem", "UnsafeExpression", "accuracy_reward", "arithmetic", "countdown", "extract_answer",
           "format_reward", "parse_response", "safe_eval", "total_reward"]
