"""octuefs: a Google Cloud Storage bucket as a directory, Octue Datafile metadata as xattrs."""

__version__ = "0.1.0"

from .datafile import Datafile  # noqa: E402  (after __version__, which submodules may read)

__all__ = ["Datafile", "__version__"]
