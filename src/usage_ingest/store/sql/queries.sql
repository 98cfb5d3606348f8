-- Named queries, loaded once by usage_ingest.store. Every value is a bound parameter.

-- name: fetch_reference
-- The reference data one batch needs, in one round trip: the product items it
-- names, the contracts it names by id or by debtor, the inventory records of
-- those contracts' sites for the products named with them (active within the
-- batch's days), and which of its operating sites exist. Typed columns (one
-- array per attribute) rather than JSON: the driver decodes them natively.
-- $1, $2 contract ids and the product references named with them (pairs),
-- $3, $4 debtor ids and the product references named with them (pairs),
-- $5 operating sites, $6 first day, $7 last day of the batch.
WITH contract_wants AS (
    SELECT DISTINCT * FROM unnest($1::bigint[], $2::text[]) AS w(contract_id, product_reference)
), debtor_wants AS (
    SELECT DISTINCT * FROM unnest($3::bigint[], $4::text[]) AS w(debtor_id, product_reference)
), products AS (
    SELECT id, reference, type, status
    FROM product_items
    WHERE reference IN (
        SELECT product_reference FROM contract_wants
        UNION SELECT product_reference FROM debtor_wants
    )
), matched_contracts AS (
    SELECT id, debtor_id, site_id, start_date, end_date
    FROM contracts
    WHERE id = ANY($1::bigint[]) OR debtor_id = ANY($3::bigint[])
), site_products AS (
    SELECT c.site_id, p.id AS product_id
    FROM contract_wants w
    JOIN matched_contracts c ON c.id = w.contract_id
    JOIN products p ON p.reference = w.product_reference
    UNION
    SELECT c.site_id, p.id
    FROM debtor_wants w
    JOIN matched_contracts c ON c.debtor_id = w.debtor_id
    JOIN products p ON p.reference = w.product_reference
), inventories AS (
    SELECT i.id, i.site_id, i.usage_product_id, i.start_date, i.end_date, i.billable
    FROM usage_product_inventories i
    JOIN site_products sp ON sp.site_id = i.site_id AND sp.product_id = i.usage_product_id
    WHERE i.start_date <= $7::date
      AND (i.end_date IS NULL OR i.end_date >= $6::date)
)
SELECT
    (SELECT coalesce(array_agg(code), '{}') FROM operating_sites WHERE code = ANY($5::text[]))
        AS operating_sites,
    p.*, c.*, i.*
FROM (
    SELECT array_agg(id) AS product_ids, array_agg(reference) AS product_references,
        array_agg(type) AS product_types, array_agg(status) AS product_statuses
    FROM products
) p, (
    SELECT array_agg(id) AS contract_ids, array_agg(debtor_id) AS contract_debtors,
        array_agg(site_id) AS contract_sites, array_agg(start_date) AS contract_starts,
        array_agg(end_date) AS contract_ends
    FROM matched_contracts
) c, (
    SELECT array_agg(id) AS inventory_ids, array_agg(site_id) AS inventory_sites,
        array_agg(usage_product_id) AS inventory_products,
        array_agg(start_date) AS inventory_starts, array_agg(end_date) AS inventory_ends,
        array_agg(billable) AS inventory_billable
    FROM inventories
) i;

-- name: prepare_usage_batch
-- Each connection's staging table for insert_usage_batch, created when the connection
-- opens: a batch is copied in (COPY), then claimed and written by one statement; every
-- commit empties it. Instants come as RFC 3339 text in UTC (the canonical payload's).
CREATE TEMPORARY TABLE IF NOT EXISTS usage_batch (
    external_reference text, contract_id bigint, debtor_id bigint, inventory_id bigint,
    product_item_id bigint, product_ident text, description text,
    start_date text, end_date text, operating_site text, tax_location jsonb,
    performance_location jsonb, service_country text, unit_quantities jsonb,
    properties jsonb, billable boolean, payload_hash text, raw_payload text,
    source_topic text, source_partition integer, source_offset bigint
) ON COMMIT DELETE ROWS;

-- name: insert_usage_batch
-- Claim and write in one statement (SPEC.md §6): the staged rows whose external
-- reference is new are inserted, and come back with their ids. Rows go in
-- external_reference order so two workers lock keys in the same order and
-- cannot deadlock each other.
INSERT INTO usages (
    external_reference, contract_id, debtor_id, inventory_id, product_item_id, product_ident,
    description, start_date, end_date, operating_site, tax_location,
    performance_location, service_country, unit_quantities, properties, billable, payload_hash,
    raw_payload, source_topic, source_partition, source_offset
)
SELECT
    external_reference, contract_id, debtor_id, inventory_id, product_item_id, product_ident,
    description, start_date::timestamptz, end_date::timestamptz, operating_site, tax_location,
    performance_location, service_country, unit_quantities, properties, billable, payload_hash,
    raw_payload, source_topic, source_partition, source_offset
FROM usage_batch
ORDER BY external_reference
ON CONFLICT (external_reference) DO NOTHING
RETURNING id, external_reference;

-- name: fetch_stored_usages
-- The rows that already held the references insert_usage_batch did not insert, so
-- the caller can tell a duplicate (same hash) from a conflict. Few, and found by the
-- unique index; a join in the insert itself was planned as a scan of all usages.
SELECT external_reference, id, payload_hash, source_topic, source_partition, source_offset
FROM usages
WHERE external_reference = ANY($1::text[]);

-- name: upsert_operating_sites
INSERT INTO operating_sites (code)
SELECT unnest($1::text[])
ON CONFLICT (code) DO NOTHING
RETURNING code;

-- name: upsert_product_item_by_id
INSERT INTO product_items AS t (
    id, reference, name, description, type, status, tax_category, display_order, unit_name,
    custom_fields
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10::jsonb)
ON CONFLICT (id) DO UPDATE SET
    reference = EXCLUDED.reference, name = EXCLUDED.name, description = EXCLUDED.description,
    type = EXCLUDED.type, status = EXCLUDED.status, tax_category = EXCLUDED.tax_category,
    display_order = EXCLUDED.display_order, unit_name = EXCLUDED.unit_name,
    custom_fields = EXCLUDED.custom_fields, updated_at = now()
WHERE (t.reference, t.name, t.description, t.type, t.status, t.tax_category, t.display_order,
       t.unit_name, t.custom_fields)
    IS DISTINCT FROM
      (EXCLUDED.reference, EXCLUDED.name, EXCLUDED.description, EXCLUDED.type, EXCLUDED.status,
       EXCLUDED.tax_category, EXCLUDED.display_order, EXCLUDED.unit_name, EXCLUDED.custom_fields)
RETURNING id, (xmax = 0) AS inserted;

-- name: upsert_product_item_by_reference
INSERT INTO product_items AS t (
    reference, name, description, type, status, tax_category, display_order, unit_name,
    custom_fields
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb)
ON CONFLICT (reference) DO UPDATE SET
    name = EXCLUDED.name, description = EXCLUDED.description,
    type = EXCLUDED.type, status = EXCLUDED.status, tax_category = EXCLUDED.tax_category,
    display_order = EXCLUDED.display_order, unit_name = EXCLUDED.unit_name,
    custom_fields = EXCLUDED.custom_fields, updated_at = now()
WHERE (t.name, t.description, t.type, t.status, t.tax_category, t.display_order,
       t.unit_name, t.custom_fields)
    IS DISTINCT FROM
      (EXCLUDED.name, EXCLUDED.description, EXCLUDED.type, EXCLUDED.status,
       EXCLUDED.tax_category, EXCLUDED.display_order, EXCLUDED.unit_name, EXCLUDED.custom_fields)
RETURNING id, (xmax = 0) AS inserted;

-- name: upsert_contract
INSERT INTO contracts AS t (id, debtor_id, site_id, start_date, end_date)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (id) DO UPDATE SET
    debtor_id = EXCLUDED.debtor_id, site_id = EXCLUDED.site_id,
    start_date = EXCLUDED.start_date, end_date = EXCLUDED.end_date, updated_at = now()
WHERE (t.debtor_id, t.site_id, t.start_date, t.end_date)
    IS DISTINCT FROM (EXCLUDED.debtor_id, EXCLUDED.site_id, EXCLUDED.start_date, EXCLUDED.end_date)
RETURNING id, (xmax = 0) AS inserted;

-- name: find_inventory_by_natural_key
-- An inventory record given without id is the one with the same site, product and start.
SELECT id FROM usage_product_inventories
WHERE site_id = $1 AND usage_product_id = $2 AND start_date = $3
ORDER BY id
LIMIT 1;

-- name: upsert_inventory
INSERT INTO usage_product_inventories AS t (
    id, site_id, usage_product_id, start_date, end_date, supplier_account_id, bill_by_service_id,
    service_id, billable, in_flight_order, external_order_reference,
    external_network_order_reference, pending_end_date, usage_cap_enabled, default_usage_cap,
    override_usage_cap, apply_surcharges
)
VALUES (
    coalesce($1, nextval(pg_get_serial_sequence('usage_product_inventories', 'id'))),
    $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17
)
ON CONFLICT (id) DO UPDATE SET
    site_id = EXCLUDED.site_id, usage_product_id = EXCLUDED.usage_product_id,
    start_date = EXCLUDED.start_date, end_date = EXCLUDED.end_date,
    supplier_account_id = EXCLUDED.supplier_account_id,
    bill_by_service_id = EXCLUDED.bill_by_service_id, service_id = EXCLUDED.service_id,
    billable = EXCLUDED.billable, in_flight_order = EXCLUDED.in_flight_order,
    external_order_reference = EXCLUDED.external_order_reference,
    external_network_order_reference = EXCLUDED.external_network_order_reference,
    pending_end_date = EXCLUDED.pending_end_date, usage_cap_enabled = EXCLUDED.usage_cap_enabled,
    default_usage_cap = EXCLUDED.default_usage_cap,
    override_usage_cap = EXCLUDED.override_usage_cap,
    apply_surcharges = EXCLUDED.apply_surcharges, updated_at = now()
WHERE (t.site_id, t.usage_product_id, t.start_date, t.end_date, t.supplier_account_id,
       t.bill_by_service_id, t.service_id, t.billable, t.in_flight_order,
       t.external_order_reference, t.external_network_order_reference, t.pending_end_date,
       t.usage_cap_enabled, t.default_usage_cap, t.override_usage_cap, t.apply_surcharges)
    IS DISTINCT FROM
      (EXCLUDED.site_id, EXCLUDED.usage_product_id, EXCLUDED.start_date, EXCLUDED.end_date,
       EXCLUDED.supplier_account_id, EXCLUDED.bill_by_service_id, EXCLUDED.service_id,
       EXCLUDED.billable, EXCLUDED.in_flight_order, EXCLUDED.external_order_reference,
       EXCLUDED.external_network_order_reference, EXCLUDED.pending_end_date,
       EXCLUDED.usage_cap_enabled, EXCLUDED.default_usage_cap, EXCLUDED.override_usage_cap,
       EXCLUDED.apply_surcharges)
RETURNING id, (xmax = 0) AS inserted;

-- name: delete_other_product_references
-- Product references of an inventory record that the new version no longer lists.
DELETE FROM usage_product_references
WHERE inventory_id = $1 AND NOT (product_reference = ANY($2::text[]))
RETURNING id;

-- name: upsert_product_reference
INSERT INTO usage_product_references AS t (
    id, inventory_id, position, product_reference, "primary", label, start_date, end_date,
    user_id, user_email, cost_centre_code, department_code, notes
)
VALUES (
    coalesce($1, nextval(pg_get_serial_sequence('usage_product_references', 'id'))),
    $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13
)
ON CONFLICT (inventory_id, product_reference) DO UPDATE SET
    position = EXCLUDED.position, "primary" = EXCLUDED."primary", label = EXCLUDED.label,
    start_date = EXCLUDED.start_date, end_date = EXCLUDED.end_date, user_id = EXCLUDED.user_id,
    user_email = EXCLUDED.user_email, cost_centre_code = EXCLUDED.cost_centre_code,
    department_code = EXCLUDED.department_code, notes = EXCLUDED.notes
WHERE (t.position, t."primary", t.label, t.start_date, t.end_date, t.user_id, t.user_email,
       t.cost_centre_code, t.department_code, t.notes)
    IS DISTINCT FROM
      (EXCLUDED.position, EXCLUDED."primary", EXCLUDED.label, EXCLUDED.start_date,
       EXCLUDED.end_date, EXCLUDED.user_id, EXCLUDED.user_email, EXCLUDED.cost_centre_code,
       EXCLUDED.department_code, EXCLUDED.notes)
RETURNING id, (xmax = 0) AS inserted;

-- name: find_overlapping_product_references
-- A product reference may sit on two inventory records only if their active
-- periods do not overlap: otherwise the same number would be billed twice.
SELECT a.product_reference, a.inventory_id, b.inventory_id AS other_inventory_id
FROM usage_product_references a
JOIN usage_product_inventories ia ON ia.id = a.inventory_id
JOIN usage_product_references b
    ON b.product_reference = a.product_reference AND b.inventory_id <> a.inventory_id
JOIN usage_product_inventories ib ON ib.id = b.inventory_id
WHERE a.inventory_id = ANY($1::bigint[])
  AND daterange(ia.start_date, ia.end_date, '[]') && daterange(ib.start_date, ib.end_date, '[]')
ORDER BY a.inventory_id, a.product_reference
LIMIT 1;

-- name: reserve_explicit_ids
-- Ids the store assigns must not collide with ids given explicitly: before a load,
-- move each sequence past the largest id stored and the largest id in the file.
-- $1, $2, $3 the largest explicit product item, inventory and product reference id.
SELECT
    setval(pg_get_serial_sequence('product_items', 'id'),
           greatest((SELECT max(id) FROM product_items), $1::bigint, 1)),
    setval(pg_get_serial_sequence('usage_product_inventories', 'id'),
           greatest((SELECT max(id) FROM usage_product_inventories), $2::bigint, 1)),
    setval(pg_get_serial_sequence('usage_product_references', 'id'),
           greatest((SELECT max(id) FROM usage_product_references), $3::bigint, 1));


-- ===========================================================================
-- HTTP API (usage_ingest.api; SPEC-API.md)
-- ===========================================================================

-- name: lock_inventory_writes
-- Writes of inventory records (the API's and `reference load`) take this lock, so
-- that the overlap rule and the one-record-per-site-product-start rule are checked
-- against committed data: two concurrent writers cannot both pass the check.
SELECT pg_advisory_xact_lock(hashtextextended('usage-ingest.inventory-writes', 0));

-- name: product_item_exists
SELECT EXISTS (SELECT 1 FROM product_items WHERE id = $1);

-- name: find_other_inventory_by_natural_key
-- Another record with the same site, product and start date ($4: the record
-- being written, null when it is new).
SELECT id FROM usage_product_inventories
WHERE site_id = $1 AND usage_product_id = $2 AND start_date = $3
  AND id IS DISTINCT FROM $4::bigint
ORDER BY id
LIMIT 1;

-- name: fetch_inventories
-- Inventory records in the platform API's JSON form (camelCase), by id.
SELECT i.id, json_build_object(
    'id', i.id,
    'siteId', i.site_id,
    'usageProductId', i.usage_product_id,
    'startDate', i.start_date,
    'endDate', i.end_date,
    'supplierAccountId', i.supplier_account_id,
    'billByServiceId', i.bill_by_service_id,
    'serviceId', i.service_id,
    'billable', i.billable,
    'inFlightOrder', i.in_flight_order,
    'externalOrderReference', i.external_order_reference,
    'externalNetworkOrderReference', i.external_network_order_reference,
    'pendingEndDate', i.pending_end_date,
    'usageCapEnabled', i.usage_cap_enabled,
    'defaultUsageCap', i.default_usage_cap,
    'overrideUsageCap', i.override_usage_cap,
    'applySurcharges', i.apply_surcharges,
    'productReferences', coalesce((
        SELECT json_agg(json_build_object(
            'id', r.id,
            'productReference', r.product_reference,
            'primary', r."primary",
            'label', r.label,
            'startDate', r.start_date,
            'endDate', r.end_date,
            'userId', r.user_id,
            'userEmail', r.user_email,
            'costCentreCode', r.cost_centre_code,
            'departmentCode', r.department_code,
            'notes', r.notes
        ) ORDER BY r.position, r.id)
        FROM usage_product_references r
        WHERE r.inventory_id = i.id
    ), '[]'::json)
)::text AS record
FROM usage_product_inventories i
WHERE i.id = ANY($1::bigint[]);

-- name: list_inventory_ids
-- One page of inventory ids and the number of matching records, in one snapshot.
-- A template: Store.list_inventories replaces the two markers below with SQL built
-- from whitelisted column names only; every value is a bound parameter ($3 on).
-- $1 limit, $2 offset.
WITH matched AS (
    SELECT i.*
    FROM usage_product_inventories i
    WHERE true /*where*/
)
SELECT
    (SELECT count(*) FROM matched) AS total,
    ARRAY(SELECT id FROM matched ORDER BY /*order by*/ LIMIT $1 OFFSET $2) AS ids;

-- name: insert_product_item
-- A new product item; nothing (no row) when the reference is taken.
INSERT INTO product_items (
    reference, name, description, type, status, tax_category, display_order, unit_name,
    custom_fields
)
VALUES ($1, $2, $3, $4, 'ACTIVE', $5, $6, $7::jsonb, $8::jsonb)
ON CONFLICT (reference) DO NOTHING
RETURNING json_build_object(
    'id', id,
    'object_type', 'product_item',
    'reference', reference,
    'name', name,
    'description', description,
    'type', type,
    'status', status,
    'tax_category', tax_category,
    'display_order', display_order,
    'unit_name', unit_name,
    'custom_fields', custom_fields
)::text AS record;

-- name: fetch_contract
SELECT json_build_object(
    'id', id,
    'debtorId', debtor_id,
    'siteId', site_id,
    'startDate', start_date,
    'endDate', end_date
)::text AS record
FROM contracts
WHERE id = $1;

-- name: fetch_usage
-- A stored usage; jsonb columns as text so quantities stay exact decimals.
SELECT
    id, external_reference, contract_id, debtor_id, inventory_id, product_item_id,
    product_ident, description, start_date, end_date, operating_site,
    tax_location::text AS tax_location, performance_location::text AS performance_location,
    service_country, unit_quantities::text AS unit_quantities, properties::text AS properties,
    billable, payload_hash, source_topic, source_partition, source_offset, received_at
FROM usages
WHERE external_reference = $1;

-- name: insert_api_key
INSERT INTO api_keys (key_id, name, key_hash, permissions)
VALUES ($1, $2, $3, $4::text[])
ON CONFLICT (key_id) DO NOTHING
RETURNING key_id;

-- name: find_api_key
SELECT key_id, name, key_hash, permissions, created_at, revoked_at
FROM api_keys
WHERE key_id = $1;

-- name: list_api_keys
SELECT key_id, name, key_hash, permissions, created_at, revoked_at
FROM api_keys
ORDER BY created_at, key_id;

-- name: revoke_api_key
-- Revoking twice keeps the first revocation time.
UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
WHERE key_id = $1
RETURNING key_id, name, key_hash, permissions, created_at, revoked_at;

-- name: has_migrations_table
SELECT to_regclass('schema_migrations') IS NOT NULL;

-- name: applied_migrations
SELECT coalesce(array_agg(version), '{}') FROM schema_migrations;

-- name: list_usage_rejection_ids
-- One page of refusal ids and the number of matching refusals, in one snapshot.
-- A template: Store.list_rejections replaces the two markers below with SQL built
-- from whitelisted column names only; every value is a bound parameter ($3 on).
-- $1 limit, $2 offset. `u` is the usage now stored under the refusal's reference.
WITH matched AS (
    SELECT j.id, j.external_reference, j.retryable, j.failed_at, j.replay_count,
           u.id AS resolved_by
    FROM usage_rejections j
    LEFT JOIN usages u ON u.external_reference = j.external_reference
    WHERE true /*where*/
)
SELECT
    (SELECT count(*) FROM matched) AS total,
    ARRAY(SELECT id FROM matched ORDER BY /*order by*/ LIMIT $1 OFFSET $2) AS ids;

-- name: fetch_usage_rejections
-- Refusals by id, each with the id of the usage now stored under its reference (or NULL).
SELECT j.id, j.external_reference, j.errors::text AS errors, j.retryable,
       j.source_topic, j.source_partition, j.source_offset, j.source_timestamp,
       j.failed_at, j.replay_count, u.id AS resolved_by
FROM usage_rejections j
LEFT JOIN usages u ON u.external_reference = j.external_reference
WHERE j.id = ANY($1::bigint[]);

-- ====================================================================

-- The read side: GET /usages and its CSV export (SPEC-API.md, "The read side")
-- ===========================================================================

-- name: list_usages
-- One page of stored usages, with the columns of fetch_usage. A template:
-- compose_usage_page replaces the markers with SQL built from whitelisted column
-- names only; every value is a bound parameter ($3 on). $1 limit, $2 offset.
SELECT
    id, external_reference, contract_id, debtor_id, inventory_id, product_item_id,
    product_ident, description, start_date, end_date, operating_site,
    tax_location::text AS tax_location, performance_location::text AS performance_location,
    service_country, unit_quantities::text AS unit_quantities, properties::text AS properties,
    billable, payload_hash, source_topic, source_partition, source_offset, received_at
FROM usages u
WHERE true /*where*/
ORDER BY /*order by*/
LIMIT $1 OFFSET $2;

-- name: count_usages
-- The number of stored usages matching the filters (a template, as list_usages).
SELECT count(*) FROM usages u WHERE true /*where*/;

-- name: export_usages
-- The CSV export's lines of up to $1 usages, after a position in the order (or from
-- the start; a template, as list_usages, whose /*keys*/ are the sort keys, selected
-- so that the next chunk can start after the last usage of this one). One line per
-- unit quantity, in the order given; a usage without quantities gives one line with
-- unit and quantity null. Quantities as the text of their jsonb number: exact.
-- $2 offset (0 unless a page is asked for).
SELECT
    u.*, q.item ->> 'unit' AS unit, q.item ->> 'quantity' AS quantity
FROM (
    SELECT
        id, external_reference, contract_id, debtor_id, inventory_id, product_ident,
        start_date, end_date, billable, received_at, unit_quantities /*keys*/
    FROM usages u
    WHERE true /*where*/
    ORDER BY /*order by*/
    LIMIT $1 OFFSET $2
) u
LEFT JOIN LATERAL jsonb_array_elements(
    CASE WHEN jsonb_typeof(u.unit_quantities) = 'array' THEN u.unit_quantities END
) WITH ORDINALITY AS q(item, n) ON true
ORDER BY /*outer order by*/, q.n;

-- name: summarize_usages
-- GET /usage-summaries: per group and unit, the usages holding that unit and the exact
-- sum of its quantities (numeric, as text: never a float, never rounded); a usage without
-- quantities counts under unit NULL with quantity 0. One statement: the number of groups
-- and one page of them, as a JSON array.
-- A template: UsageSummaryStore.summarize_usages replaces the markers below with SQL
-- built from whitelisted expressions and names only; every value is a bound parameter
-- ($3 on). $1 limit, $2 offset.
WITH quantities AS (
    SELECT u.*, q->>'unit' AS unit, (q->>'quantity')::numeric AS quantity
    FROM usages u
    LEFT JOIN LATERAL jsonb_array_elements(
        CASE WHEN jsonb_typeof(u.unit_quantities) = 'array'
            THEN u.unit_quantities ELSE '[]'::jsonb END
    ) AS q ON true
    WHERE true /*where*/
),
groups AS (
    SELECT /*group columns*/ unit, count(*) AS usages, coalesce(sum(quantity), 0)::text AS quantity
    FROM quantities
    GROUP BY /*group by*/ unit
)
SELECT
    (SELECT count(*) FROM groups) AS total,
    coalesce(
        (SELECT json_agg(page ORDER BY /*order by*/)::text
         FROM (SELECT * FROM groups ORDER BY /*order by*/ LIMIT $1 OFFSET $2) page),
        '[]'
    ) AS items;

-- name: clear_usage_batch
-- Empties the staging table inside a transaction: needed when one batch stores its
-- usages in more than one call (a row at a time, to find the one the database refuses).
DELETE FROM usage_batch;

-- name: insert_rejection_batch
-- Every refusal of one batch in one statement (SPEC.md §7), in the batch's transaction;
-- a source record kept before (a re-delivery) adds no second row. The codes are read
-- from the errors themselves, in their order.
-- $1 external references, $2 errors (JSON arrays as text), $3 retryable, $4 topics,
-- $5 partitions, $6 offsets, $7 record timestamps (milliseconds since the epoch, NULL
-- for none), $8 replay counts, $9 failed_at (RFC 3339, one instant for the batch).
INSERT INTO usage_rejections (
    external_reference, errors, codes, retryable, source_topic, source_partition,
    source_offset, source_timestamp, failed_at, replay_count
)
SELECT
    r.external_reference, r.errors,
    ARRAY(
        SELECT e.value ->> 'code'
        FROM jsonb_array_elements(r.errors) WITH ORDINALITY AS e(value, n)
        ORDER BY e.n
    ),
    r.retryable, r.source_topic, r.source_partition, r.source_offset,
    timestamptz 'epoch' + r.timestamp_ms * interval '1 millisecond',
    $9::text::timestamptz, r.replay_count
FROM (
    SELECT u.external_reference, u.errors::jsonb AS errors, u.retryable, u.source_topic,
        u.source_partition, u.source_offset, u.timestamp_ms, u.replay_count
    FROM unnest(
        $1::text[], $2::text[], $3::boolean[], $4::text[], $5::integer[], $6::bigint[],
        $7::bigint[], $8::integer[]
    ) AS u(
        external_reference, errors, retryable, source_topic, source_partition,
        source_offset, timestamp_ms, replay_count
    )
) r
ORDER BY r.source_topic, r.source_partition, r.source_offset
ON CONFLICT (source_topic, source_partition, source_offset) DO NOTHING;

-- name: count_rejections_failed_before
-- `usage-ingest rejections prune --dry-run`: how many refusals failed before $1.
SELECT count(*) FROM usage_rejections WHERE failed_at < $1::timestamptz;

-- name: delete_rejections_failed_before
-- `usage-ingest rejections prune`: at most $2 of the refusals that failed before $1,
-- oldest first, so that a large prune is many short transactions; returns how many.
WITH doomed AS (
    SELECT id FROM usage_rejections
    WHERE failed_at < $1::timestamptz
    ORDER BY failed_at, id
    LIMIT $2
), deleted AS (
    DELETE FROM usage_rejections r USING doomed d WHERE r.id = d.id RETURNING 1
)
SELECT count(*) FROM deleted;

-- --- the replay's lock: one replay per replay group at a time (store/replay_lock.py) ---

-- name: try_replay_lock
-- The session-level advisory lock $1 of a replay group, or false at once when another
-- session holds it. Postgres releases it when the session ends.
SELECT pg_try_advisory_lock($1::bigint);

-- name: replay_lock_held
-- Whether this session still holds the advisory lock whose 64-bit key has the high half
-- $1 and the low half $2 (how pg_locks shows a bigint key: classid, objid, objsubid 1).
SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()
        AND classid::bigint = $1::bigint AND objid::bigint = $2::bigint AND objsubid = 1
);

-- name: replay_unlock
SELECT pg_advisory_unlock($1::bigint);

-- ===== Worker reports (0004_worker_reports.sql): heartbeats and outcome counts ========

-- name: report_worker
-- One worker's report in one statement: its heartbeat and its outcome counts. A count
-- is the minute's running total as the worker holds it, set (not added): a report
-- retried after a failure whose outcome is unknown counts nothing twice.
-- $1 worker id, $2 host, $3 pid, $4 group id, $5 ready, $6 checks (JSON as text),
-- $7 started_at, $8 report interval (s), $9 stopping (the last report sets stopped_at),
-- $10 minutes, $11 statuses, $12 codes, $13 counts.
WITH heartbeat AS (
    INSERT INTO worker_heartbeats (
        worker_id, host, pid, group_id, ready, checks, started_at, reported_at,
        report_interval_s, stopped_at
    )
    VALUES (
        $1::text, $2, $3, $4, $5, $6::text::jsonb, $7, now(), $8,
        CASE WHEN $9::boolean THEN now() END
    )
    ON CONFLICT (worker_id) DO UPDATE SET
        ready = excluded.ready,
        checks = excluded.checks,
        reported_at = excluded.reported_at,
        report_interval_s = excluded.report_interval_s,
        stopped_at = excluded.stopped_at
    RETURNING 1
), counts AS (
    INSERT INTO worker_outcome_counts (worker_id, minute, status, code, count)
    SELECT $1::text, u.minute, u.status, u.code, u.count
    FROM unnest($10::timestamptz[], $11::text[], $12::text[], $13::bigint[])
        AS u(minute, status, code, count)
    ON CONFLICT (worker_id, minute, status, code) DO UPDATE SET count = excluded.count
    RETURNING 1
)
SELECT (SELECT count(*) FROM heartbeat) AS heartbeats, (SELECT count(*) FROM counts) AS counts;

-- name: worker_statuses
-- The console's overview: workers that have not stopped and reported within $1 seconds,
-- newest report first; stale when three of their report intervals passed without one.
SELECT worker_id, host, pid, ready, checks, started_at, reported_at,
    reported_at < now() - 3 * report_interval_s * interval '1 second' AS stale
FROM worker_heartbeats
WHERE stopped_at IS NULL AND reported_at >= now() - $1::double precision * interval '1 second'
ORDER BY reported_at DESC, worker_id;

-- name: outcome_counts
-- The console's chart: outcomes per minute summed over the workers, from the minute
-- holding $1 on, oldest first.
SELECT minute, status, code, sum(count)::bigint AS count
FROM worker_outcome_counts
WHERE minute >= date_trunc('minute', $1::timestamptz)
GROUP BY minute, status, code
ORDER BY minute, status, code;

-- name: prune_worker_reports
-- Outcome counts of minutes older than $1 seconds, and heartbeats (of workers stopped
-- or gone) not renewed for $2 seconds; returns how many rows of each went.
WITH counts AS (
    DELETE FROM worker_outcome_counts
    WHERE minute < now() - $1::double precision * interval '1 second'
    RETURNING 1
), heartbeats AS (
    DELETE FROM worker_heartbeats
    WHERE reported_at < now() - $2::double precision * interval '1 second'
    RETURNING 1
)
SELECT (SELECT count(*) FROM counts) AS counts, (SELECT count(*) FROM heartbeats) AS heartbeats;

-- ====================================================================
-- The operations console: its sessions
-- ====================================================================

-- name: insert_console_session
-- $1 sha256 of the token, $2 the key id, $3 seconds until it expires.
INSERT INTO console_sessions (token_hash, key_id, expires_at)
VALUES ($1, $2, now() + $3::double precision * interval '1 second');

-- name: find_console_session
-- A session that has not expired, with its key as it is now (revoked or not).
SELECT s.expires_at, k.key_id, k.name, k.permissions, k.revoked_at
FROM console_sessions s
JOIN api_keys k ON k.key_id = s.key_id
WHERE s.token_hash = $1 AND s.expires_at > now();

-- name: delete_console_session
DELETE FROM console_sessions WHERE token_hash = $1;

-- name: delete_expired_console_sessions
DELETE FROM console_sessions WHERE expires_at <= now();
