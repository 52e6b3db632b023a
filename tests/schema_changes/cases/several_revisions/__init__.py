"""A release of two revisions, each its own transaction, with users acting between them:
0002 adds a note, 0003 renames label to title. Changes come in three shapes."""

from tests.schema_changes.items_v1 import ACTIONS as V1

USES_ITEMS_V1 = True
STEPS = ["0002", "0003"]
MAPPING = {"items": {"columns": {"label": {"from": "title"}}}}
ACTIONS = {
    "0001": V1,
    "0002": {
        "create": "INSERT INTO items (id, label, qty, note) VALUES (%(k)s, %(v)s, %(n)s, 'new')",
        "edit": "UPDATE items SET label = %(v)s, qty = %(n)s, note = 'edited' WHERE id = %(k)s",
        "delete": V1["delete"],
    },
    "0003": {
        "create": "INSERT INTO items (id, title, qty, note) VALUES (%(k)s, %(v)s, %(n)s, 'new')",
        "edit": "UPDATE items SET title = %(v)s, qty = %(n)s, note = 'edited' WHERE id = %(k)s",
        "delete": V1["delete"],
    },
}
