"""The demo bucket: a few files with Octue metadata, so a newcomer can look around at once."""

from __future__ import annotations

import datetime as dt
import logging

from octuefs.errors import PreconditionFailed
from octuefs.octue import metadata as octue
from octuefs.storage.base import Bucket

log = logging.getLogger(__name__)

DEMO_BUCKET = "octuefs-demo"

_UTC = dt.timezone.utc

DEMO_FILES: list[tuple[str, bytes, dict]] = [
    (
        "README.txt",
        b"This is octuefs's demo bucket, served by a local emulator.\n"
        b"Try:  getfattr -d wind/anemometer-2024-01-01.csv\n"
        b"      setfattr -n user.octue.labels -v 'raw cleaned' wind/anemometer-2024-01-01.csv\n",
        {},
    ),
    (
        "wind/anemometer-2024-01-01.csv",
        b"time,speed_m_s\n2024-01-01T00:00:00Z,7.9\n2024-01-01T00:10:00Z,8.4\n2024-01-01T00:20:00Z,8.1\n",
        dict(
            tags={"instrument": "anemometer", "height_m": 80.5, "calibrated": True},
            labels={"raw", "qc-passed"},
            timestamp=dt.datetime(2024, 1, 1, tzinfo=_UTC),
            sequence=0,
        ),
    ),
    (
        "wind/anemometer-2024-01-02.csv",
        b"time,speed_m_s\n2024-01-02T00:00:00Z,11.2\n2024-01-02T00:10:00Z,10.7\n",
        dict(
            tags={"instrument": "anemometer", "height_m": 80.5, "calibrated": True},
            labels={"raw"},
            timestamp=dt.datetime(2024, 1, 2, tzinfo=_UTC),
            sequence=1,
        ),
    ),
    (
        "turbines/vestas-v90.json",
        b'{"model": "V90", "rated_power_kw": 3000, "rotor_diameter_m": 90}\n',
        dict(tags={"manufacturer": "Vestas", "output": "3MW"}, labels={"turbine", "spec"}, cluster=1),
    ),
]


def seed(bucket: Bucket) -> int:
    """Upload the demo files that are not there yet; return how many were added."""
    added = 0
    for name, data, fields in DEMO_FILES:
        custom = octue.encode_object_metadata(octue.OctueMetadata(**fields).with_id()) if fields else {}
        try:
            bucket.upload_bytes(name, data, custom, if_generation_match=0)
            added += 1
        except PreconditionFailed:
            pass  # already there, perhaps changed by the user: leave it
    if added:
        log.info("seeded the demo bucket with %d files", added)
    return added
