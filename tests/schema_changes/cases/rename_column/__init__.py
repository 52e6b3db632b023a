"""Rename a column: items.label becomes items.title."""

from tests.schema_changes.items_v1 import ACTIONS as V1

USES_ITEMS_V1 = True
MAPPING = {"items": {"columns": {"label": {"from": "title"}}}}
ACTIONS = {
    "0001": V1,
    "0002": {
        "create": "INSERT INTO items (id, title, qty) VALUES (%(k)s, %(v)s, %(n)s)",
        "edit": "UPDATE items SET title = %(v)s, qty = %(n)s WHERE id = %(k)s",
        "delete": "DELETE FROM items WHERE id = %(k)s",
    },
}
