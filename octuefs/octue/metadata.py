"""The Octue Datafile metadata model and the one codec between its forms, in one place to import.

Everything that knows what an Octue field looks like lives in this package, so a value set through
``setfattr`` reads back identically through the Python ``Datafile`` API and through the Octue SDK:

* :mod:`octuefs.octue.model`: :class:`OctueMetadata`, the validated, immutable model (id,
  timestamp, tags, labels, cluster, sequence); the ``validate_*`` functions of
  :mod:`octuefs.octue.fields` define what each field may hold;
* :mod:`octuefs.octue.objectform`: GCS custom metadata ``octue__<field>`` holding the SDK's JSON
  text (:func:`decode_object_metadata`, :func:`encode_object_metadata`, :func:`metadata_patch`,
  :func:`check_size_limits`);
* :mod:`octuefs.octue.xattrform`: ``user.octue.*`` attributes as ``getfattr``/``setfattr`` see
  them (:func:`list_xattr_names`, :func:`get_xattr`, :func:`set_xattr`, :func:`remove_xattr`),
  and the file's other ``user.*`` attributes, which the model carries (``OctueMetadata.xattrs``)
  so they travel wherever its metadata does; their keys and values are
  :mod:`octuefs.octue.userxattrs`;
* :mod:`octuefs.octue.localform`: a datafile's record in its directory's ``.octue`` file.

The layout is the one in ``octue-metadata.md`` (SDK 0.69.1, plus the ``cluster``/``sequence``
keys of SDK 0.1.19-0.1.27). Two choices beyond the SDK: labels are folded to lower case before
they are validated (so ``Vestas`` is stored as ``vestas``, which every SDK can read back), and a
tag name may not end in a newline (the SDK's ``$`` lets one through). The ``user.octue.timestamp``
text is POSIX seconds: it carries the instant, not the offset, so setting it back to the same
instant keeps the datetime already held (naive or with its offset).

Reading is lenient (a malformed stored value logs one warning and reads as the field's default);
writing is byte-preserving (a stored value that already means what the model holds is kept as it
is, so a round trip never rewrites what another writer stored). Only this package spells an
``octue__`` key (tests/unit/test_layers.py).
"""

from __future__ import annotations

from octuefs.octue.fields import (
    format_timestamp,
    instant_micros,
    validate_cluster,
    validate_id,
    validate_labels,
    validate_sequence,
    validate_tag_name,
    validate_tags,
    validate_timestamp,
)
from octuefs.octue.localform import (
    LOCAL_METADATA_FILENAME,
    decode_local_record,
    dumps_local_metadata,
    encode_local_record,
    loads_local_metadata,
)
from octuefs.octue.model import FIELDS, OCTUE_PREFIX, SDK_LAYOUT_VERSION, OctueMetadata
from octuefs.octue.objectform import (
    MAX_KEY_BYTES,
    MAX_TOTAL_BYTES,
    MAX_VALUE_BYTES,
    SDK_VERSION_KEY,
    TAGS_KEY,
    check_size_limits,
    decode_object_metadata,
    encode_object_metadata,
    identified,
    merge_tags,
    metadata_delta,
    metadata_patch,
    octue_patch_from,
    reapply_tags,
    same_field_value,
    with_octue_id,
)
from octuefs.octue.xattrform import (
    XATTR_CREATE,
    XATTR_PREFIX,
    XATTR_REPLACE,
    get_xattr,
    is_octue_xattr,
    is_stored_xattr,
    list_xattr_names,
    remove_xattr,
    set_xattr,
)

__all__ = [
    "SDK_LAYOUT_VERSION",
    "OCTUE_PREFIX",
    "XATTR_PREFIX",
    "XATTR_CREATE",
    "XATTR_REPLACE",
    "OctueMetadata",
    "validate_tag_name",
    "validate_tags",
    "validate_labels",
    "validate_cluster",
    "validate_sequence",
    "validate_timestamp",
    "validate_id",
    "format_timestamp",
    "instant_micros",
    "decode_object_metadata",
    "encode_object_metadata",
    "metadata_delta",
    "metadata_patch",
    "check_size_limits",
    "merge_tags",
    "is_octue_xattr",
    "is_stored_xattr",
    "identified",
    "list_xattr_names",
    "get_xattr",
    "set_xattr",
    "remove_xattr",
    "LOCAL_METADATA_FILENAME",
    "decode_local_record",
    "encode_local_record",
    "dumps_local_metadata",
    "loads_local_metadata",
    "with_octue_id",
    "octue_patch_from",
    "same_field_value",
    "TAGS_KEY",
    "SDK_VERSION_KEY",
    "reapply_tags",
    "MAX_KEY_BYTES",
    "MAX_VALUE_BYTES",
    "MAX_TOTAL_BYTES",
    "FIELDS",
]
