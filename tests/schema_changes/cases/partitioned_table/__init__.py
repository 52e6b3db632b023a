"""A table partitioned by range, with a composite key; the new version adds a column."""

MAPPING: dict[str, object] = {}
TABLES = {"events": "id"}
ACTIONS = {
    "0001": {
        "create": "INSERT INTO events (id, day, kind) VALUES (%(k)s, date '2026-01-01' + (%(k)s * 17 %% 360), %(v)s)",
        "edit": "UPDATE events SET kind = %(v)s WHERE id = %(k)s",
        "delete": "DELETE FROM events WHERE id = %(k)s",
    },
    "0002": {
        "create": "INSERT INTO events (id, day, kind, source) VALUES (%(k)s, date '2026-01-01' + (%(k)s * 17 %% 360), %(v)s, 'web')",
        "edit": "UPDATE events SET kind = %(v)s, source = 'app' WHERE id = %(k)s",
        "delete": "DELETE FROM events WHERE id = %(k)s",
    },
}
