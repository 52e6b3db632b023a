"""Arrays: text[] becomes varchar(20)[], and an int[] column is added."""

MAPPING: dict[str, object] = {}
TABLES = {"posts": "id"}
ACTIONS = {
    "0001": {
        "create": "INSERT INTO posts (id, tags) VALUES (%(k)s, ARRAY['new', 'n' || %(n)s])",
        "edit": "UPDATE posts SET tags = ARRAY['a,b', 'q\"uote', NULL, 'e' || %(n)s] WHERE id = %(k)s",
        "delete": "DELETE FROM posts WHERE id = %(k)s",
    },
    "0002": {
        "create": "INSERT INTO posts (id, tags, scores) VALUES (%(k)s, ARRAY['new', 'n' || %(n)s], ARRAY[%(n)s, 2])",
        "edit": "UPDATE posts SET tags = ARRAY['a,b', 'q\"uote', NULL, 'e' || %(n)s], scores = '{}' WHERE id = %(k)s",
        "delete": "DELETE FROM posts WHERE id = %(k)s",
    },
}
