"""The Octue model: metadata fields, their validation and JSON dialect, the one codec between
object metadata, the model and xattrs, and the SDK's ``Datafile`` and ``Dataset`` APIs."""
