"""Drop a column the new version no longer writes (it has a default in the old one)."""

from tests.schema_changes.items_v1 import ACTIONS as V1

USES_ITEMS_V1 = False
MAPPING: dict[str, object] = {}
DOWNGRADE_LOSES_DATA = True  # the column's values are gone with it: only a restore brings them back
ACTIONS = {"0001": V1, "0002": V1}
