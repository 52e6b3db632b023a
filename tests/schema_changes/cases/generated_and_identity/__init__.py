"""An identity key (GENERATED ALWAYS), and a generated column the new version adds."""

MAPPING: dict[str, object] = {}
TABLES = {"lines": "id"}
ACTIONS = {
    "0001": {
        "create": "INSERT INTO lines (id, qty, price) OVERRIDING SYSTEM VALUE VALUES (%(k)s, %(n)s, 2.5)",
        "edit": "UPDATE lines SET qty = %(n)s, price = price + 1 WHERE id = %(k)s",
        "delete": "DELETE FROM lines WHERE id = %(k)s",
    },
}
ACTIONS["0002"] = ACTIONS["0001"]
