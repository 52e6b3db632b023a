"""Add a nullable column that users fill in on the new version."""

from tests.schema_changes.items_v1 import ACTIONS as V1

USES_ITEMS_V1 = True
MAPPING: dict[str, object] = {}
ACTIONS = {
    "0001": V1,
    "0002": {
        "create": "INSERT INTO items (id, label, qty, note) VALUES (%(k)s, %(v)s, %(n)s, 'note ' || %(v)s)",
        "edit": "UPDATE items SET label = %(v)s, qty = %(n)s, note = 'edited' WHERE id = %(k)s",
        "delete": "DELETE FROM items WHERE id = %(k)s",
    },
}
