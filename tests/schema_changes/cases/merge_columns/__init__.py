"""Merge first_name and last_name into full_name (expressions split it back)."""

MAPPING = {"customers": {"columns": {
    "first_name": {"expr": "split_part(new->>'full_name', ' ', 1)"},
    "last_name": {"expr": "substr(new->>'full_name', strpos(new->>'full_name', ' ') + 1)"}}}}
TABLES = {"customers": "id"}
ACTIONS = {
    "0001": {
        "create": "INSERT INTO customers (id, first_name, last_name) VALUES (%(k)s, 'n' || %(n)s, 'Lee')",
        "edit": "UPDATE customers SET first_name = 'n' || %(n)s, last_name = 'Lee' WHERE id = %(k)s",
        "delete": "DELETE FROM customers WHERE id = %(k)s",
    },
    "0002": {
        "create": "INSERT INTO customers (id, full_name) VALUES (%(k)s, 'n' || %(n)s || ' Lee')",
        "edit": "UPDATE customers SET full_name = 'n' || %(n)s || ' Lee' WHERE id = %(k)s",
        "delete": "DELETE FROM customers WHERE id = %(k)s",
    },
}
