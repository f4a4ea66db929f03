"""Field types for request bodies and query parameters that must be storable on
every backend a service runs on.

Both databases refuse some values pydantic accepts: PostgreSQL cannot store a NUL
character in text, neither driver can encode an unpaired surrogate (which
``json.loads`` happily produces from ``"\\ud800"``), and a datetime near year 1
or 9999 overflows when converted to UTC. Left to the database these become 500s;
these types turn them into 422s that name the field.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime


def storable_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no unpaired surrogates)") from None
    return value


def to_utc(value: dt.datetime) -> dt.datetime:
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None


# Add to any str annotation: ``Annotated[str, StringConstraints(...), StorableText]``.
StorableText = AfterValidator(storable_text)

# A timestamp with an explicit offset, converted to UTC; naive ones are refused
# rather than guessed.
UTCTimestamp = Annotated[AwareDatetime, AfterValidator(to_utc)]
