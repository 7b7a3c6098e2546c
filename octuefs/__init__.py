"""octuefs: a Google Cloud Storage bucket as a directory, Octue Datafile metadata as xattrs."""

__version__ = "0.1.0"

from octuefs.octue.datafile import Datafile  # noqa: E402  (after __version__, which submodules may read)
from octuefs.octue.dataset import Dataset  # noqa: E402

__all__ = ["Datafile", "Dataset", "__version__"]
