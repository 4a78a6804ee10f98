"""The version of conceptkit (one place: the package and the files and reports it writes)."""

__version__ = "0.2.0.dev0"
