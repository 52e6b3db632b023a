"""Rename a table: items becomes products."""

from tests.schema_changes.items_v1 import ACTIONS as V1

USES_ITEMS_V1 = True
MAPPING = {"products": {"to": "items"}}
ACTIONS = {
    "0001": V1,
    "0002": {key: statement.replace("items", "products") for key, statement in V1.items()},
}
