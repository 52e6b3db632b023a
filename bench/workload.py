"""A small social app's schema, seed data and a mixed write workload with exact change counts.

Three tables with the columns such an app has (text, timestamps, counters, jsonb, arrays). Each
workload transaction makes exactly 100 row changes: 35 inserts, 50 updates, 15 deletes, over
all three tables. Updates hit rows at random (some rows change many times); deletes hit rows
nobody else touches, so that every statement changes exactly the rows it names.
"""

from __future__ import annotations

import random
from typing import Any

import psycopg

SCHEMA = """
CREATE TABLE users (
    id         bigserial PRIMARY KEY,
    email      text NOT NULL UNIQUE,
    name       text NOT NULL,
    bio        text,
    karma      integer NOT NULL DEFAULT 0,
    settings   jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz
);
CREATE TABLE posts (
    id         bigserial PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users,
    title      text NOT NULL,
    body       text NOT NULL,
    tags       text[] NOT NULL DEFAULT '{}',
    likes      integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz
);
CREATE INDEX posts_user ON posts (user_id);
CREATE TABLE reactions (
    id         bigserial PRIMARY KEY,
    post_id    bigint NOT NULL REFERENCES posts,
    user_id    bigint NOT NULL REFERENCES users,
    kind       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reactions_post ON reactions (post_id);
"""

USERS, POSTS, REACTIONS = 20_000, 50_000, 100_000
# Seeded rows reserved for deletes (no other statement touches them, no reaction points at them).
DELETABLE_REACTIONS = range(1, 20_001)
DELETABLE_POSTS = range(POSTS - 10_000 + 1, POSTS + 1)
REACTED_POSTS = POSTS - 10_000  # reactions only ever point at posts 1..this

SEED = (
    """INSERT INTO users (email, name, bio, karma, settings, created_at, last_seen)
       SELECT 'user' || i || '@example.com', 'User ' || i, repeat('about me ', 1 + i %% 12), i %% 500,
              jsonb_build_object('theme', CASE WHEN i %% 2 = 0 THEN 'dark' ELSE 'light' END, 'lang', 'en'),
              now() - i * interval '1 minute', now() - (i %% 97) * interval '1 hour'
       FROM generate_series(1, %(users)s) i""",
    """INSERT INTO posts (user_id, title, body, tags, likes, created_at)
       SELECT 1 + i %% %(users)s, 'Post number ' || i, repeat('Lorem ipsum dolor sit amet. ', 5 + i %% 15),
              ARRAY['tag' || i %% 17, 'tag' || i %% 5], i %% 40, now() - i * interval '10 seconds'
       FROM generate_series(1, %(posts)s) i""",
    """INSERT INTO reactions (post_id, user_id, kind, created_at)
       SELECT 1 + i %% %(reacted)s, 1 + (i * 7) %% %(users)s, (ARRAY['like', 'love', 'laugh'])[1 + i %% 3],
              now() - i * interval '1 second'
       FROM generate_series(1, %(reactions)s) i""",
)

CHANGES_PER_TX = 100


def create(dsn: str) -> None:
    """Schema and seed rows into an empty database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)  # type: ignore[arg-type]
        sizes = {"users": USERS, "posts": POSTS, "reactions": REACTIONS, "reacted": REACTED_POSTS}
        for statement in SEED:
            conn.execute(statement, sizes)
        conn.execute("VACUUM ANALYZE")


class Workload:
    """Writes to one database seeded by `create()`; deletes never repeat within one instance."""

    def __init__(self, seed: int = 42) -> None:
        self.rng = random.Random(seed)
        self.deletable_reactions = list(DELETABLE_REACTIONS)
        self.deletable_posts = list(DELETABLE_POSTS)
        self.rng.shuffle(self.deletable_reactions)
        self.rng.shuffle(self.deletable_posts)
        self.new_users = 0

    def _sample(self, low: int, high: int, n: int) -> list[int]:
        return self.rng.sample(range(low, high + 1), n)

    def transaction(self, conn: psycopg.Connection[Any]) -> int:
        """One transaction of exactly CHANGES_PER_TX changes; returns that number."""
        rng = self.rng
        emails = [f"new{self.new_users + i}-{rng.randrange(10**9)}@example.org" for i in range(5)]
        self.new_users += 5
        dead_reactions = [self.deletable_reactions.pop() for _ in range(10)]
        dead_posts = [self.deletable_posts.pop() for _ in range(5)]
        with conn.transaction():
            conn.execute(  # 5 inserts
                """INSERT INTO users (email, name, bio, settings)
                   SELECT e, 'New user ' || e, 'just joined', '{"theme": "light"}'
                   FROM unnest(%s::text[]) e""", (emails,))
            conn.execute(  # 10 inserts
                """INSERT INTO posts (user_id, title, body, tags)
                   SELECT u, 'Fresh post by ' || u, repeat('Some words about things. ', 8), ARRAY['new']
                   FROM unnest(%s::bigint[]) u""", (self._sample(1, USERS, 10),))
            conn.execute(  # 20 inserts
                """INSERT INTO reactions (post_id, user_id, kind)
                   SELECT p, u, 'like' FROM unnest(%s::bigint[], %s::bigint[]) AS t(p, u)""",
                (self._sample(1, REACTED_POSTS, 20), self._sample(1, USERS, 20)))
            conn.execute(  # 15 updates
                "UPDATE users SET last_seen = now(), karma = karma + 1 WHERE id = ANY(%s)",
                (self._sample(1, USERS, 15),))
            conn.execute(  # 25 updates
                "UPDATE posts SET likes = likes + 1, updated_at = now() WHERE id = ANY(%s)",
                (self._sample(1, DELETABLE_POSTS.start - 1, 25),))
            conn.execute(  # 10 updates
                "UPDATE reactions SET kind = 'love' WHERE id = ANY(%s)",
                (self._sample(DELETABLE_REACTIONS.stop, REACTIONS, 10),))
            conn.execute("DELETE FROM reactions WHERE id = ANY(%s)", (dead_reactions,))  # 10 deletes
            conn.execute("DELETE FROM posts WHERE id = ANY(%s)", (dead_posts,))  # 5 deletes
        return CHANGES_PER_TX

    def run(self, dsn: str, changes: int) -> int:
        """`changes` changes (a multiple of CHANGES_PER_TX) in transactions of 100."""
        with psycopg.connect(dsn, autocommit=True) as conn:
            return sum(self.transaction(conn) for _ in range(changes // CHANGES_PER_TX))
