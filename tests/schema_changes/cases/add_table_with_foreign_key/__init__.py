"""Add comments, with a foreign key to items; the new version comments on what it creates."""

from tests.schema_changes.items_v1 import ACTIONS as V1

USES_ITEMS_V1 = True
MAPPING: dict[str, object] = {}
ACTIONS = {
    "0001": V1,
    "0002": {
        "create": [V1["create"],
                   "INSERT INTO comments (item_id, body) VALUES (%(k)s, 'first! ' || %(v)s)"],
        "edit": [V1["edit"], "INSERT INTO comments (item_id, body) VALUES (%(k)s, %(v)s)"],
        "delete": V1["delete"],
    },
}
