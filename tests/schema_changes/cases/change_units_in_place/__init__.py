"""The same column, new units: duration in seconds becomes milliseconds. Only the revision
tells a change's units apart: its columns are the same before and after the migration."""

MAPPING = {"tasks": {"columns": {"duration": {"expr": "(new->>'duration')::bigint / 1000"}}}}
TABLES = {"tasks": "id"}
OLD_RUNS_ON_NEW = False  # the old version would write seconds into a column of milliseconds
ACTIONS = {
    "0001": {
        "create": "INSERT INTO tasks (id, name, duration) VALUES (%(k)s, %(v)s, %(n)s)",
        "edit": "UPDATE tasks SET name = %(v)s, duration = %(n)s WHERE id = %(k)s",
        "delete": "DELETE FROM tasks WHERE id = %(k)s",
    },
    "0002": {
        "create": "INSERT INTO tasks (id, name, duration) VALUES (%(k)s, %(v)s, %(n)s * 1000)",
        "edit": "UPDATE tasks SET name = %(v)s, duration = %(n)s * 1000 WHERE id = %(k)s",
        "delete": "DELETE FROM tasks WHERE id = %(k)s",
    },
}
