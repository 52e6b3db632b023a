"""Text columns become an enum and a domain with a CHECK."""

MAPPING: dict[str, object] = {}
TABLES = {"accounts": "id"}
ACTIONS = {
    "0001": {
        "create": "INSERT INTO accounts (id, status, email) VALUES (%(k)s, 'active', 'u' || %(n)s || '@example.com')",
        "edit": "UPDATE accounts SET status = CASE WHEN %(n)s %% 2 = 0 THEN 'closed' ELSE 'active' END, email = 'e' || %(n)s || '@example.com' WHERE id = %(k)s",
        "delete": "DELETE FROM accounts WHERE id = %(k)s",
    },
}
ACTIONS["0002"] = ACTIONS["0001"]
