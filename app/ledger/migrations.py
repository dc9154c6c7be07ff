"""Ordered, named schema migrations; each applied once and recorded in `schema_migrations`.

The SQL is written to run on both SQLite and PostgreSQL. Never edit a released migration:
add the next one. Each backend applies, in this tuple's order, every migration its database
has not recorded, so a gap in the numbers (a migration that lands later, from a change made in
parallel) is filled in when it arrives; migrations made in parallel must not depend on each other.
"""

from __future__ import annotations

MIGRATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "0001_usage_records",
        (
            """CREATE TABLE usage_records (
                id TEXT PRIMARY KEY,
                request_id TEXT NOT NULL,
                received_at DOUBLE PRECISION NOT NULL,
                first_byte_at DOUBLE PRECISION,
                finished_at DOUBLE PRECISION,
                client TEXT NOT NULL,
                end_user TEXT,
                route TEXT,
                endpoint TEXT NOT NULL,
                requested_model TEXT,
                upstream_model TEXT,
                persona_id TEXT,
                stream BOOLEAN NOT NULL,
                status INTEGER NOT NULL,
                outcome TEXT NOT NULL,
                credits_used NUMERIC,
                input_tokens INTEGER,
                output_tokens INTEGER,
                latency_ms DOUBLE PRECISION,
                ttfb_ms DOUBLE PRECISION,
                upstream_request_id TEXT,
                error_code TEXT
            )""",
            "CREATE INDEX usage_records_received ON usage_records (received_at)",
            "CREATE INDEX usage_records_client ON usage_records (client, received_at)",
        ),
    ),
    (
        "0002_gateway_keys",
        (
            """CREATE TABLE gateway_keys (
                name TEXT PRIMARY KEY,
                key_sha256 TEXT NOT NULL UNIQUE,
                persona_id TEXT,
                allow_persona_override BOOLEAN,
                credit_budget INTEGER,
                budget_period TEXT NOT NULL,
                rpm INTEGER,
                created_at DOUBLE PRECISION NOT NULL,
                revoked_at DOUBLE PRECISION
            )""",
        ),
    ),
    (
        "0003_persona_source",
        ("ALTER TABLE usage_records ADD COLUMN persona_source TEXT",),
    ),
    (
        "0004_reservation",
        ("ALTER TABLE usage_records ADD COLUMN credits_reserved NUMERIC",),
    ),
    (
        "0005_attribution",
        (
            "ALTER TABLE usage_records ADD COLUMN tags TEXT",
            # One row per (record, tag), so a report groups by tag with a plain join and
            # GROUP BY, indexed, in the same SQL on SQLite and PostgreSQL; a JSON column would
            # need json_each on one and jsonb_array_elements_text on the other, unindexed.
            """CREATE TABLE record_tags (
                record_id TEXT NOT NULL,
                tag TEXT NOT NULL,
                PRIMARY KEY (record_id, tag)
            )""",
            "CREATE INDEX record_tags_tag ON record_tags (tag)",
            # Persona names from Mavera's list, so offline reports can show them.
            """CREATE TABLE personas (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL
            )""",
        ),
    ),
    (
        "0006_audit",
        (
            # the ClientSpec fields that came after 0002, so stored keys keep all their settings
            "ALTER TABLE gateway_keys ADD COLUMN max_concurrent INTEGER",
            "ALTER TABLE gateway_keys ADD COLUMN weight INTEGER",
            "ALTER TABLE gateway_keys ADD COLUMN tags TEXT",  # a JSON array
            # every admin change to keys: who, when, what; never key material
            """CREATE TABLE admin_audit (
                id TEXT PRIMARY KEY,
                at DOUBLE PRECISION NOT NULL,
                actor TEXT NOT NULL,
                action TEXT NOT NULL,
                client TEXT NOT NULL,
                changes TEXT NOT NULL
            )""",
            "CREATE INDEX admin_audit_at ON admin_audit (at)",
        ),
    ),
)
