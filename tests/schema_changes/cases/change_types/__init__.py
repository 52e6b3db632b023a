"""Change types: int to bigint, text to varchar(n), numeric precision."""

ACTIONS = {
    "0001": {
        "create": "INSERT INTO items (id, qty, name, price) VALUES (%(k)s, %(n)s, %(v)s, %(n)s + 0.25)",
        "edit": "UPDATE items SET qty = %(n)s, name = %(v)s, price = %(n)s + 0.5 WHERE id = %(k)s",
        "delete": "DELETE FROM items WHERE id = %(k)s",
    },
}
ACTIONS["0002"] = ACTIONS["0001"]
MAPPING: dict[str, object] = {}
