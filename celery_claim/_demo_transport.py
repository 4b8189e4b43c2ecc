"""kombu's filesystem transport, with messages that appear whole.

The stock transport creates the message file in the queue folder and then
writes it, so a consumer polling at that moment can read an empty file and
stop ("Unrecoverable error: JSONDecodeError"), losing the message. Here a
message is written beside the queue folder and renamed into it, which is
atomic on one file system. The demo uses it as its embedded broker.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from time import monotonic
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

__all__ = ["Transport"]


class Channel(filesystem.Channel):
    # The same signature as the stock filesystem channel's (which differs from its base's).
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        # The stock transport's file name: the consumer sorts by it and matches the queue.
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        target = Path(self.data_folder_out) / name
        staging = target.parent.parent / "staging" / name
        staging.parent.mkdir(exist_ok=True)
        staging.write_bytes(str_to_bytes(dumps(payload)))  # type: ignore[no-untyped-call]
        os.replace(staging, target)


class Transport(filesystem.Transport):
    Channel = Channel
