"""Add a NOT NULL column with a default: the old version's inserts still run on the new schema."""

from tests.schema_changes.items_v1 import ACTIONS as V1

USES_ITEMS_V1 = True
MAPPING: dict[str, object] = {}
ACTIONS = {
    "0001": V1,
    "0002": {
        "create": "INSERT INTO items (id, label, qty, status) VALUES (%(k)s, %(v)s, %(n)s, 'fresh')",
        "edit": "UPDATE items SET label = %(v)s, qty = %(n)s, status = 'edited' WHERE id = %(k)s",
        "delete": "DELETE FROM items WHERE id = %(k)s",
    },
}
