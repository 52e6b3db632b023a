"""Add a column with a default, set by users of the new version."""

from tests.schema_changes.items_v1 import ACTIONS as V1

USES_ITEMS_V1 = True
MAPPING: dict[str, object] = {}
ACTIONS = {
    "0001": V1,
    "0002": {
        "create": 'INSERT INTO items (id, label, qty, score) VALUES (%(k)s, %(v)s, %(n)s, %(n)s * 10)',
        "edit": 'UPDATE items SET label = %(v)s, qty = %(n)s, score = score + 1 WHERE id = %(k)s',
        "delete": "DELETE FROM items WHERE id = %(k)s",
    },
}
