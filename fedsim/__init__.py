"""fedsim: a federated learning simulator built on Flower.

Simulate many clients on one machine, deploy the same clients as real processes across
hosts, and compare strategies in TensorBoard.
"""

__version__ = "0.1.0"

from fedsim.api import RunResult, run  # light: the heavy imports happen inside run()

__all__ = ["RunResult", "__version__", "run"]
