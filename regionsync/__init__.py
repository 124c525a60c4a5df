"""regionsync: keeps a database of a Kaleyra RCS agent's regions and their history."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("regionsync")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
