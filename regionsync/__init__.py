"""regionsync: keeps a database of a Kaleyra RCS agent's regions and their history."""

# The one place the version is written: pyproject.toml reads it from here (a constant
# costs a one-shot ``run`` nothing; importing importlib.metadata to read it would not).
__version__ = "0.1.0"

__all__ = ["__version__"]
