"""Add a UNIQUE and a CHECK constraint that every user action keeps."""

from tests.schema_changes.items_v1 import ACTIONS as V1

USES_ITEMS_V1 = True
MAPPING: dict[str, object] = {}
ACTIONS = {"0001": V1, "0002": V1}
