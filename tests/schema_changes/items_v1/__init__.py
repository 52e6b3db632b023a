"""Version 1 of the items app, which most cases start from, and what its users run."""

ACTIONS = {
    "create": "INSERT INTO items (id, label, qty) VALUES (%(k)s, %(v)s, %(n)s)",
    "edit": "UPDATE items SET label = %(v)s, qty = %(n)s WHERE id = %(k)s",
    "delete": "DELETE FROM items WHERE id = %(k)s",
}
