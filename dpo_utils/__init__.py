"""dpo_utils: the helper package of the companion book to Im & Li (ICML 2024).

Modules (one idea each): config, losses, linear, synthetic, metrics, results, plotting, book.
Import the module you need, e.g. ``from dpo_utils import config, linear``.
"""

__version__ = "0.1.0"
