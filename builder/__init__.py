"""azbuild: a declarative builder of Azure-ready Linux images."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("azbuild")
except PackageNotFoundError:  # running from a source checkout without install
    __version__ = "0.1.0+source"
