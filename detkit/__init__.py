"""detkit: object detection and transfer learning toolkit for PyTorch.

Subpackages: ``ops`` (box operations), ``models``, ``data``, ``engine``, ``eval``.
"""

__version__ = "0.1.0"
