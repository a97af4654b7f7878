"""BUNET: Blind U-Net — secure two-party segmentation of COVID-19 lesions in chest CT.

``bunet.Client`` (the hospital) and ``bunet.Server`` (the model vendor); see README.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Client", "Server", "__version__"]

if TYPE_CHECKING:
    from .client import Client
    from .server import Server


def __getattr__(name: str) -> Any:  # lazy: `import bunet` stays cheap for the CLI and tests
    if name == "Client":
        from .client import Client

        return Client
    if name == "Server":
        from .server import Server

        return Server
    raise AttributeError(name)
