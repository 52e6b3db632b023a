"""Split customers.full_name into first_name and last_name (an expression maps them back)."""

MAPPING = {"customers": {"columns": {
    "full_name": {"expr": "concat_ws(' ', new->>'first_name', new->>'last_name')"}}}}
TABLES = {"customers": "id"}
ACTIONS = {
    "0001": {
        "create": "INSERT INTO customers (id, full_name) VALUES (%(k)s, %(v)s || ' Lee')",
        "edit": "UPDATE customers SET full_name = %(v)s || ' Lee' WHERE id = %(k)s",
        "delete": "DELETE FROM customers WHERE id = %(k)s",
    },
    "0002": {
        "create": "INSERT INTO customers (id, first_name, last_name) VALUES (%(k)s, %(v)s, 'Lee')",
        "edit": "UPDATE customers SET first_name = %(v)s, last_name = 'Lee' WHERE id = %(k)s",
        "delete": "DELETE FROM customers WHERE id = %(k)s",
    },
}
