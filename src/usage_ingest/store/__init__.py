"""The Postgres store: the only package that talks to asyncpg, one module per concern.

`store.Store` composes them; `connection` holds the pool, the named queries of
`sql/queries.sql` and the translation of driver errors into the project's own.
"""
