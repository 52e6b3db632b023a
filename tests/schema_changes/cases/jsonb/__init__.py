"""A column moves into a jsonb document: color becomes attrs->>'color' (an expression maps it
back); another jsonb column is edited on both versions."""

MAPPING = {"things": {"columns": {"color": {"expr": "new->'attrs'->>'color'"}}}}
TABLES = {"things": "id"}
ACTIONS = {
    "0001": {
        "create": "INSERT INTO things (id, color, meta) VALUES (%(k)s, 'red', jsonb_build_object('n', %(n)s, 'deep', jsonb_build_object('x', null)))",
        "edit": "UPDATE things SET color = 'c' || %(n)s, meta = meta || jsonb_build_object('edited', %(n)s) WHERE id = %(k)s",
        "delete": "DELETE FROM things WHERE id = %(k)s",
    },
    "0002": {
        "create": "INSERT INTO things (id, attrs, meta) VALUES (%(k)s, '{\"color\": \"red\"}', jsonb_build_object('n', %(n)s, 'deep', jsonb_build_object('x', null)))",
        "edit": "UPDATE things SET attrs = jsonb_build_object('color', 'c' || %(n)s), meta = meta || jsonb_build_object('edited', %(n)s) WHERE id = %(k)s",
        "delete": "DELETE FROM things WHERE id = %(k)s",
    },
}
