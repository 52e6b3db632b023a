"""Add a column and backfill it inside the migration; the new version keeps it up to date."""

from tests.schema_changes.items_v1 import ACTIONS as V1

USES_ITEMS_V1 = True
MAPPING: dict[str, object] = {}
ACTIONS = {
    "0001": V1,
    "0002": {
        "create": "INSERT INTO items (id, label, qty, slug) VALUES (%(k)s, %(v)s, %(n)s, lower(%(v)s))",
        "edit": "UPDATE items SET label = %(v)s, qty = %(n)s, slug = lower(%(v)s) WHERE id = %(k)s",
        "delete": V1["delete"],
    },
}
