"""Drop a table (notes) the new version no longer uses."""

from tests.schema_changes.items_v1 import ACTIONS as V1

USES_ITEMS_V1 = False
MAPPING: dict[str, object] = {}
DOWNGRADE_LOSES_DATA = True  # the table's rows are gone with it: only a restore brings them back
TABLES = {"items": "id", "notes": "id"}
ACTIONS = {
    "0001": {
        "create": [V1["create"], "INSERT INTO notes (id, body) VALUES (%(k)s, %(v)s)"],
        "edit": [V1["edit"], "UPDATE notes SET body = %(v)s WHERE id = %(k)s"],
        "delete": [V1["delete"], "DELETE FROM notes WHERE id = %(k)s"],
    },
    "0002": V1,
}
EQUIVALENT = {"0002": V1}  # the new version's actions leave notes alone
