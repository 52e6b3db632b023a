"""A data migration that rewrites 20,000 rows: prices move to a new column, in cents."""

MAPPING = {"items": {"columns": {"price": {"expr": "(new->>'price_cents')::numeric / 100"}}}}
ACTIONS = {
    "0001": {
        "create": "INSERT INTO items (id, label, price) VALUES (%(k)s, %(v)s, %(n)s + 0.99)",
        "edit": "UPDATE items SET label = %(v)s, price = %(n)s + 0.5 WHERE id = %(k)s",
        "delete": "DELETE FROM items WHERE id = %(k)s",
    },
    "0002": {
        "create": "INSERT INTO items (id, label, price_cents) VALUES (%(k)s, %(v)s, %(n)s * 100 + 99)",
        "edit": "UPDATE items SET label = %(v)s, price_cents = %(n)s * 100 + 50 WHERE id = %(k)s",
        "delete": "DELETE FROM items WHERE id = %(k)s",
    },
}
