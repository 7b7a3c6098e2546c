"""Paths to object names: what the kernel may hand over that no object name can be."""

from __future__ import annotations

import pytest

from octuefs.errors import InvalidArgument, errno_for
from octuefs.namespace import Namespace


@pytest.mark.parametrize("path", ["/\udcff", "/caf\udce9.csv", "/dir/\udcc0\udcaf"])
def test_a_path_that_is_not_utf8_is_einval_not_an_encoding_crash(path):
    # mfusepy decodes names with surrogateescape; GCS names are UTF-8, so such a path can
    # name no object. It used to reach the storage client and fail there with EIO.
    with pytest.raises(InvalidArgument) as info:
        Namespace("p/").object_name(path)
    assert errno_for(info.value)[0] == 22


def test_odd_but_valid_names_map_straight_through():
    ns = Namespace()
    assert ns.object_name("/new\nline") == "new\nline"
    assert ns.object_name("/ünï/%ff") == "ünï/%ff"
