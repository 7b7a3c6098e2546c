"""Review 5 of issue 14, part 4, on a real mount over fake-gcs-server: a setfattr raced by
another writer."""

from __future__ import annotations

import json
import os
import time

import pytest

from .test_setfattr_rate import limited, rmount  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.fuse, pytest.mark.emulator]

# As the Octue SDK 0.69.1 leaves an object: no octue__cluster nor octue__sequence key.
SDK_LEFT = {
    "octue__id": '"02464c6f-0070-50ca-8a9b-ba1af5456601"',
    "octue__timestamp": '{"_type": "datetime", "value": "2024-01-01T00:00:00.123456+00:00"}',
    "octue__tags": '{"instrument": "anemometer"}',
    "octue__labels": '{"_type": "set", "items": ["raw"]}',
    "octue__sdk_version": '"0.69.1"',
}


def test_a_tag_set_through_the_mount_keeps_a_cluster_set_elsewhere_meanwhile(rmount):  # noqa: F811
    """The mount spells out every default when it encodes (cluster "0" where the SDK left none);
    that is no change of its own, so a cluster another machine set meanwhile stays. The other
    machine writes through the same strict proxy as the mount (``rmount.bucket``), so the mount's
    patch meets the metageneration that machine moved, as on GCS."""
    other = rmount.bucket
    other.upload_bytes("s.csv", b"1,2\n", dict(SDK_LEFT))
    time.sleep(1.1)  # (GCS's pace: one change of an object per second)
    os.setxattr(rmount / "s.csv", "user.octue.tags.t", b"1")  # sent about a second later
    other.patch_metadata("s.csv", {"octue__cluster": "5"})  # another machine, before the patch goes
    rmount.sync()
    metadata = other.stat("s.csv").metadata
    assert json.loads(metadata["octue__tags"]) == {"instrument": "anemometer", "t": 1}
    assert metadata["octue__cluster"] == "5"
    assert "changed in the bucket while a setfattr here waited" in rmount.log_text()  # (it met the race)
