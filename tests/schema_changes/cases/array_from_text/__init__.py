"""posts.tags text[] becomes tags_csv text; an expression builds the array back."""

MAPPING = {"posts": {"columns": {"tags": {"expr": "string_to_array(new->>'tags_csv', ',')"}}}}
TABLES = {"posts": "id"}
ACTIONS = {
    "0001": {
        "create": "INSERT INTO posts (id, tags) VALUES (%(k)s, ARRAY['new', 'n' || %(n)s])",
        "edit": "UPDATE posts SET tags = ARRAY['a', 'e' || %(n)s] WHERE id = %(k)s",
        "delete": "DELETE FROM posts WHERE id = %(k)s",
    },
    "0002": {
        "create": "INSERT INTO posts (id, tags_csv) VALUES (%(k)s, 'new,n' || %(n)s)",
        "edit": "UPDATE posts SET tags_csv = 'a,e' || %(n)s WHERE id = %(k)s",
        "delete": "DELETE FROM posts WHERE id = %(k)s",
    },
}
