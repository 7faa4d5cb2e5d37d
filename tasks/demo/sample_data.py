"""A database shaped like the guide's ai_saas app (User, Conversation, Message), of a chosen size.

Rows are generated inside PostgreSQL with generate_series, so even a
gigabyte takes seconds to create and costs the client no memory.
"""

from __future__ import annotations

from psycopg import sql

from tasks.core.postgres import ConnInfo

SCHEMA = """
CREATE TABLE IF NOT EXISTS "User" (
    id bigserial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    name text,
    "createdAt" timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS "Conversation" (
    id bigserial PRIMARY KEY,
    "userId" bigint NOT NULL REFERENCES "User"(id) ON DELETE CASCADE,
    title text NOT NULL,
    "createdAt" timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS "Message" (
    id bigserial PRIMARY KEY,
    "conversationId" bigint NOT NULL REFERENCES "Conversation"(id) ON DELETE CASCADE,
    role text NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content text NOT NULL,
    tokens integer NOT NULL DEFAULT 0,
    "createdAt" timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_messages_conversation_created
    ON "Message"("conversationId", "createdAt" DESC);
"""

LOREM = (
    "Sure! Here is a summary of the quarterly report you shared. Revenue grew by twelve "
    "percent while churn fell, mostly thanks to the new onboarding flow. Could you explain "
    "how the vector index handles updates? The assistant suggested batching writes and "
    "running ANALYZE after large imports so the planner keeps choosing the right index. "
    "Please draft an email to the team about the migration window on Saturday night. "
)

# Average bytes one Message row adds to a plain dump (measured on this generator).
BYTES_PER_MESSAGE = 243


def create_sample_database(info: ConnInfo, size_mb: float = 5.0) -> dict[str, int]:
    """Create the guide's schema in the database of info and fill it to about size_mb of dump."""
    messages = max(50, int(size_mb * 1024 * 1024 / BYTES_PER_MESSAGE))
    conversations = max(5, messages // 20)
    users = max(2, conversations // 5)
    with info.connect() as conn:
        conn.execute(SCHEMA)
        conn.execute(
            """
            INSERT INTO "User"(email, name, "createdAt")
            SELECT 'user' || i || '@example.com', 'User ' || i,
                   now() - (i || ' minutes')::interval
            FROM generate_series(1, %s) AS i
            """,
            [users],
        )
        conn.execute(
            """
            INSERT INTO "Conversation"("userId", title, "createdAt")
            SELECT 1 + (i %% %s), 'Conversation ' || i, now() - (i || ' seconds')::interval
            FROM generate_series(1, %s) AS i
            """,
            [users, conversations],
        )
        conn.execute(
            sql.SQL(
                """
                INSERT INTO "Message"("conversationId", role, content, tokens, "createdAt")
                SELECT 1 + (i % {conversations}),
                       (ARRAY['user', 'assistant', 'system'])[1 + i % 3],
                       substr({lorem}, (1 + (i * 7919) % 300)::int, (80 + (i * 104729) % 160)::int)
                           || ' ' || md5(i::text),
                       (i * 31) % 900,
                       now() - (i || ' seconds')::interval
                FROM generate_series(1::bigint, {messages}) AS i
                """
            ).format(
                conversations=sql.Literal(conversations),
                lorem=sql.Literal(LOREM),
                messages=sql.Literal(messages),
            )
        )
        conn.execute('ANALYZE "User", "Conversation", "Message"')
    return {"public.User": users, "public.Conversation": conversations, "public.Message": messages}
