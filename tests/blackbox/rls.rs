//! Row-level tenancy. On Postgres, as the application role (a superuser
//! bypasses row-level security, so the test connects as one and
//! `SET ROLE authd_app`), for every tenant-owned table discovered from the
//! catalog: a query without a tenant filter sees only the current tenant's
//! rows, no tenant set means no rows, a transaction-local tenant does not
//! outlive its transaction, and writes aimed at another tenant change
//! nothing. On SQLite, the store's reads for one tenant never return
//! another's rows.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use authd_core::{EventId, TenantId, UserId};
use authd_store::{AuditEvent, AuditFilter, UserChange};
use sqlx::{Connection, PgConnection, Row};

use crate::both;
use crate::harness::{Backend, Tenant, TestServer};

/// Tables in `public` whose primary key leads with `tenant_id`.
pub(crate) async fn tenant_owned_tables(conn: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_constraint k ON k.conrelid = c.oid AND k.contype = 'p' \
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.conkey[1] \
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND a.attname = 'tenant_id' \
         ORDER BY 1",
    )
    .fetch_all(conn)
    .await
    .unwrap()
}

fn q(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn sql(s: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(s)
}

async fn count(conn: &mut PgConnection, table: &str, tenant: Option<&TenantId>) -> i64 {
    let text = match tenant {
        Some(t) => format!("SELECT count(*) FROM {} WHERE tenant_id = '{t}'", q(table)),
        None => format!("SELECT count(*) FROM {}", q(table)),
    };
    sqlx::query_scalar(sql(text)).fetch_one(conn).await.unwrap()
}

/// An application-role connection, as the service has it.
async fn app_connection(url: &str) -> PgConnection {
    let mut conn = PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql("SET ROLE authd_app").execute(&mut conn).await.unwrap();
    let who: String = sqlx::query_scalar("SELECT current_user::text").fetch_one(&mut conn).await.unwrap();
    assert_eq!(who, "authd_app");
    conn
}

/// Runs `statement` in a transaction with `tenant` set (or none), rolls back,
/// and returns the rows affected or the SQLSTATE and message of the failure.
async fn attempt(
    conn: &mut PgConnection,
    tenant: Option<&TenantId>,
    statement: &str,
    bind: Option<&str>,
) -> Result<u64, (String, String)> {
    let mut tx = conn.begin().await.unwrap();
    if let Some(t) = tenant {
        sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
            .bind(t.to_string())
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    let mut query = sqlx::query(sql(statement.to_owned()));
    if let Some(b) = bind {
        query = query.bind(b.to_owned());
    }
    let result = query.execute(&mut *tx).await;
    tx.rollback().await.unwrap();
    match result {
        Ok(done) => Ok(done.rows_affected()),
        Err(sqlx::Error::Database(e)) => Err((e.code().unwrap_or_default().into_owned(), e.message().to_owned())),
        Err(e) => panic!("{statement}: {e}"),
    }
}

/// A value of Postgres type `ty` for a NOT NULL column without a default.
fn value_for(table: &str, column: &str, ty: &str) -> String {
    match ty {
        "uuid" => "gen_random_uuid()".into(),
        "text" | "character varying" | "varchar" | "citext" => "md5(random()::text)".into(),
        "boolean" => "false".into(),
        "smallint" | "integer" | "bigint" | "numeric" | "real" | "double precision" => "0".into(),
        "timestamp with time zone" | "timestamp without time zone" => "now()".into(),
        "date" => "current_date".into(),
        "jsonb" | "json" => format!("'{{}}'::{ty}"),
        "bytea" => "'\\x00'::bytea".into(),
        "inet" => "'127.0.0.1'::inet".into(),
        t if t.ends_with("[]") => format!("'{{}}'::{t}"),
        other => {
            panic!("{table}.{column} has type {other}: teach rls.rs's value_for to fabricate one")
        }
    }
}

/// Inserts one row of `table` for `tenant`, built from the catalog: the
/// tenant id, foreign keys pointing at one of the tenant's rows of the
/// referenced table, and a plain value for every other NOT NULL column
/// without a default.
async fn fabricate_row(su: &mut PgConnection, table: &str, tenant: &TenantId) {
    let columns = sqlx::query(
        "SELECT a.attname::text AS name, format_type(a.atttypid, NULL) AS ty, a.attnotnull AS notnull, \
                a.atthasdef AS hasdef \
         FROM pg_attribute a WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY a.attnum",
    )
    .bind(q(table))
    .fetch_all(&mut *su)
    .await
    .unwrap();
    // (constraint, referenced table, column, referenced column), in key order.
    let fks = sqlx::query(
        "SELECT c.oid::bigint AS fk, c.confrelid::regclass::text AS reftable, a.attname::text AS col, \
                r.attname::text AS refcol \
         FROM pg_constraint c \
         CROSS JOIN LATERAL unnest(c.conkey, c.confkey) WITH ORDINALITY AS k(col, refcol, i) \
         JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.col \
         JOIN pg_attribute r ON r.attrelid = c.confrelid AND r.attnum = k.refcol \
         WHERE c.conrelid = $1::regclass AND c.contype = 'f' ORDER BY c.oid, k.i",
    )
    .bind(q(table))
    .fetch_all(&mut *su)
    .await
    .unwrap();
    let mut by_fk: BTreeMap<i64, (String, Vec<(String, String)>)> = BTreeMap::new();
    for row in &fks {
        let entry = by_fk.entry(row.get("fk")).or_insert_with(|| (row.get("reftable"), Vec::new()));
        entry.1.push((row.get("col"), row.get("refcol")));
    }
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    values.insert("tenant_id".into(), format!("'{tenant}'::uuid"));
    for (reftable, pairs) in by_fk.values() {
        // The referenced row must be the same tenant's: filter on the column
        // our tenant_id points at, and order so every column picks one row.
        let tenant_ref = pairs.iter().find(|(c, _)| c == "tenant_id").map(|(_, r)| r.clone());
        let filter = tenant_ref.map(|r| format!("WHERE {} = '{tenant}'", q(&r))).unwrap_or_default();
        let order: Vec<String> = pairs.iter().map(|(_, r)| q(r)).collect();
        for (col, refcol) in pairs {
            if col == "tenant_id" {
                continue;
            }
            values.insert(
                col.clone(),
                format!("(SELECT {} FROM {reftable} {filter} ORDER BY {} LIMIT 1)", q(refcol), order.join(", ")),
            );
        }
    }
    for c in &columns {
        let name: String = c.get("name");
        let (notnull, hasdef): (bool, bool) = (c.get("notnull"), c.get("hasdef"));
        if !values.contains_key(&name) && notnull && !hasdef {
            values.insert(name.clone(), value_for(table, &name, &c.get::<String, _>("ty")));
        }
    }
    let names: Vec<String> = values.keys().map(|k| q(k)).collect();
    let exprs: Vec<&str> = values.values().map(String::as_str).collect();
    let text = format!("INSERT INTO {} ({}) VALUES ({})", q(table), names.join(", "), exprs.join(", "));
    if let Err(e) = sqlx::query(sql(text.clone())).execute(&mut *su).await {
        panic!("cannot fabricate a row of {table} ({e}); adjust rls.rs's fabricate_row for it: {text}");
    }
}

/// One row of `table` owned by `tenant`, as JSON (superuser).
async fn row_json(su: &mut PgConnection, table: &str, tenant: &TenantId) -> String {
    sqlx::query_scalar(sql(format!(
        "SELECT row_to_json(x)::text FROM {} x WHERE tenant_id = '{tenant}' LIMIT 1",
        q(table)
    )))
    .fetch_one(su)
    .await
    .unwrap()
}

async fn app_can(su: &mut PgConnection, table: &str, privilege: &str) -> bool {
    sqlx::query_scalar("SELECT has_table_privilege('authd_app', $1, $2)")
        .bind(format!("public.{}", q(table)))
        .bind(privilege)
        .fetch_one(su)
        .await
        .unwrap()
}

async fn seed_two_tenants(s: &TestServer) -> (Tenant, Tenant) {
    let a = s.tenant_named("tenant-a").await;
    let b = s.tenant_named("tenant-b").await;
    // Different row counts, so "sees only A's rows" cannot pass by accident.
    for email in ["one@a.example.com", "two@a.example.com"] {
        let reg = s.register(&a.slug, email, "a perfectly fine passphrase").await;
        assert!(reg["data"]["register"].is_object(), "{reg}");
    }
    s.login(&a.slug, &a.admin_email, &a.admin_password).await;
    s.login(&b.slug, &b.admin_email, &b.admin_password).await;
    s.login_raw(&b.slug, &b.admin_email, "wrong password, recorded as an event").await;
    s.deps().audit.flush().await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_role_sees_and_writes_only_the_current_tenants_rows_in_every_tenant_owned_table() {
    let s = TestServer::start(Backend::Production).await;
    let (a, b) = seed_two_tenants(&s).await;
    let ta: TenantId = a.id.parse().unwrap();
    let tb: TenantId = b.id.parse().unwrap();
    let url = s.database_url.clone().unwrap();
    let mut su = PgConnection::connect(&url).await.unwrap();

    let tables = tenant_owned_tables(&mut su).await;
    for expected in ["users", "signing_keys", "audit_events"] {
        assert!(tables.iter().any(|t| t == expected), "catalog discovery missed {expected}: {tables:?}");
    }

    // The role: owns nothing, bypasses nothing.
    let role = sqlx::query(
        "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = 'authd_app'",
    )
    .fetch_one(&mut su)
    .await
    .unwrap();
    for flag in ["rolsuper", "rolbypassrls", "rolcreaterole", "rolcreatedb"] {
        assert!(!role.get::<bool, _>(flag), "authd_app has {flag}");
    }
    let owned: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner WHERE r.rolname = 'authd_app' \
         UNION ALL SELECT p.proname::text FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner WHERE r.rolname = 'authd_app' \
         UNION ALL SELECT n.nspname::text FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner WHERE r.rolname = 'authd_app'",
    )
    .fetch_all(&mut su)
    .await
    .unwrap();
    assert!(owned.is_empty(), "authd_app owns {owned:?}");
    // TRUNCATE skips row-level security; TRIGGER and REFERENCES are not needed.
    let all_tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')",
    )
    .fetch_all(&mut su)
    .await
    .unwrap();
    for t in &all_tables {
        for p in ["TRUNCATE", "TRIGGER", "REFERENCES"] {
            assert!(!app_can(&mut su, t, p).await, "authd_app may {p} {t}");
        }
    }

    // Every table gets rows for both tenants (fabricated where the API
    // wrote none), so each check below is meaningful.
    for t in &tables {
        for tenant in [&ta, &tb] {
            if count(&mut su, t, Some(tenant)).await == 0 {
                fabricate_row(&mut su, t, tenant).await;
            }
        }
    }

    let mut failures = Vec::new();
    let mut app = app_connection(&url).await;
    for t in &tables {
        let table = q(t);
        let (rows_a, rows_b) = (count(&mut su, t, Some(&ta)).await, count(&mut su, t, Some(&tb)).await);
        assert!(rows_a > 0 && rows_b > 0, "{t}: seeding failed ({rows_a}, {rows_b})");

        // Declared: row security enabled and forced, a policy reading the
        // transaction's tenant for reads and writes.
        let (rls, force): (bool, bool) =
            sqlx::query_as("SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = $1::regclass")
                .bind(&table)
                .fetch_one(&mut su)
                .await
                .unwrap();
        if !rls || !force {
            failures.push(format!("{t}: relrowsecurity={rls} relforcerowsecurity={force}"));
        }
        let policies: Vec<(Option<String>, Option<String>)> =
            sqlx::query_as("SELECT qual, with_check FROM pg_policies WHERE schemaname = 'public' AND tablename = $1")
                .bind(t)
                .fetch_all(&mut su)
                .await
                .unwrap();
        let guarded = |e: &Option<String>| e.as_deref().is_some_and(|e| e.contains("app.tenant_id"));
        if policies.is_empty() || !policies.iter().all(|(using, check)| guarded(using) && guarded(check)) {
            failures
                .push(format!("{t}: policies do not all read app.tenant_id for USING and WITH CHECK: {policies:?}"));
        }

        // No tenant set on a fresh connection: nothing, and no error.
        let mut fresh = app_connection(&url).await;
        let none = count(&mut fresh, t, None).await;
        if none != 0 {
            failures.push(format!("{t}: {none} rows visible with no tenant set"));
        }

        // Tenant A set: a query that forgets its filter sees A's rows only.
        let mut tx = app.begin().await.unwrap();
        sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
            .bind(ta.to_string())
            .execute(&mut *tx)
            .await
            .unwrap();
        let seen: i64 =
            sqlx::query_scalar(sql(format!("SELECT count(*) FROM {table}"))).fetch_one(&mut *tx).await.unwrap();
        let seen_b: i64 = sqlx::query_scalar(sql(format!("SELECT count(*) FROM {table} WHERE tenant_id = '{tb}'")))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        if seen != rows_a || seen_b != 0 {
            failures.push(format!("{t}: as A saw {seen} rows (A has {rows_a}) and {seen_b} of B's"));
        }

        // The setting was transaction-local: the next transaction on the
        // same connection sees nothing, without an error.
        let mut tx = app.begin().await.unwrap();
        let after: Result<i64, _> =
            sqlx::query_scalar(sql(format!("SELECT count(*) FROM {table}"))).fetch_one(&mut *tx).await;
        tx.commit().await.unwrap();
        match after {
            Ok(0) => {}
            other => failures.push(format!("{t}: after the tenant's transaction ended: {other:?}")),
        }

        // Writes aimed at B, with A set, change nothing.
        for (verb, statement) in [
            ("UPDATE", format!("UPDATE {table} SET tenant_id = tenant_id WHERE tenant_id = '{tb}'")),
            ("DELETE", format!("DELETE FROM {table} WHERE tenant_id = '{tb}'")),
        ] {
            let result = attempt(&mut app, Some(&ta), &statement, None).await;
            let allowed = app_can(&mut su, t, verb).await;
            match (&result, allowed) {
                (Ok(0), true) => {}
                (Err((code, _)), false) if code == "42501" => {}
                _ => failures.push(format!("{t}: {verb} of B's rows as A: {result:?} (privilege {allowed})")),
            }
        }
        if app_can(&mut su, t, "UPDATE").await {
            // Moving A's rows to B is refused by WITH CHECK.
            let result = attempt(&mut app, Some(&ta), &format!("UPDATE {table} SET tenant_id = '{tb}'"), None).await;
            if !matches!(&result, Err((code, msg)) if code == "42501" && msg.contains("row-level security")) {
                failures.push(format!("{t}: moving A's rows to B as A: {result:?}"));
            }
        }
        // Inserting a copy of B's row as A, or of A's row with no tenant, is refused.
        let copy = format!("INSERT INTO {table} SELECT * FROM json_populate_record(NULL::{table}, $1::json)");
        let b_row = row_json(&mut su, t, &tb).await;
        let result = attempt(&mut app, Some(&ta), &copy, Some(&b_row)).await;
        if !matches!(&result, Err((code, msg)) if code == "42501" && msg.contains("row-level security")) {
            failures.push(format!("{t}: INSERT of a B row as A: {result:?}"));
        }
        let a_row = row_json(&mut su, t, &ta).await;
        let result = attempt(&mut app, None, &copy, Some(&a_row)).await;
        if !matches!(&result, Err((code, msg)) if code == "42501" && msg.contains("row-level security")) {
            failures.push(format!("{t}: INSERT with no tenant set: {result:?}"));
        }

        // And nothing moved.
        let now = (count(&mut su, t, Some(&ta)).await, count(&mut su, t, Some(&tb)).await);
        if now != (rows_a, rows_b) {
            failures.push(format!("{t}: row counts changed from {:?} to {now:?}", (rows_a, rows_b)));
        }
    }
    assert!(failures.is_empty(), "row-level security failures:\n{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_role_may_only_append_and_read_audit_events() {
    let s = TestServer::start(Backend::Production).await;
    let (a, _) = seed_two_tenants(&s).await;
    let ta: TenantId = a.id.parse().unwrap();
    let url = s.database_url.clone().unwrap();
    let mut su = PgConnection::connect(&url).await.unwrap();
    let mut app = app_connection(&url).await;
    let before = count(&mut su, "audit_events", Some(&ta)).await;
    assert!(before > 0);

    for statement in [
        format!("UPDATE audit_events SET type = 'tampered' WHERE tenant_id = '{ta}'"),
        format!("DELETE FROM audit_events WHERE tenant_id = '{ta}'"),
        "TRUNCATE audit_events".to_owned(),
    ] {
        let result = attempt(&mut app, Some(&ta), &statement, None).await;
        assert!(matches!(&result, Err((code, _)) if code == "42501"), "{statement}: {result:?}");
    }

    // Appending and reading its own tenant's events works.
    let mut tx = app.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)").bind(ta.to_string()).execute(&mut *tx).await.unwrap();
    sqlx::query("INSERT INTO audit_events (tenant_id, id, at, type) VALUES ($1, $2, now(), 'test.appended')")
        .bind(ta.0)
        .bind(EventId::new().0)
        .execute(&mut *tx)
        .await
        .unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events").fetch_one(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(seen, before + 1);
    assert_eq!(count(&mut su, "audit_events", Some(&ta)).await, before + 1);
    let tampered: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE type = 'tampered'")
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert_eq!(tampered, 0);
}

/// The retention function runs as its owner, past the application role's
/// restrictions; with tenant A set it must not be usable to purge B's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purge_cannot_reach_another_tenants_events() {
    let s = TestServer::start(Backend::Production).await;
    let (a, b) = seed_two_tenants(&s).await;
    let (ta, tb): (TenantId, TenantId) = (a.id.parse().unwrap(), b.id.parse().unwrap());
    let url = s.database_url.clone().unwrap();
    let mut su = PgConnection::connect(&url).await.unwrap();
    let mut app = app_connection(&url).await;
    let before = count(&mut su, "audit_events", Some(&tb)).await;
    assert!(before > 0);
    // Whether the call fails or deletes nothing, B's events must all remain.
    let mut tx = app.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)").bind(ta.to_string()).execute(&mut *tx).await.unwrap();
    let _ =
        sqlx::query("SELECT authd_purge_audit_events($1, now() + interval '1 day')").bind(tb.0).execute(&mut *tx).await;
    let _ = tx.commit().await;
    assert_eq!(count(&mut su, "audit_events", Some(&tb)).await, before, "A's transaction purged B's audit events");
}

// ------------------------------------------------------------------ store level (both backends)

async fn store_reads_are_tenant_scoped(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (a, b) = seed_two_tenants(&s).await;
    let (ta, tb): (TenantId, TenantId) = (a.id.parse().unwrap(), b.id.parse().unwrap());
    let store = s.deps().store.clone();

    let b_admin = store.user_by_email(tb, &b.admin_email).await.unwrap().expect("B's admin");
    let b_users: HashSet<UserId> = store.list_users(tb, None, None, 100).await.unwrap().iter().map(|u| u.id).collect();
    let a_users: HashSet<UserId> = store.list_users(ta, None, None, 100).await.unwrap().iter().map(|u| u.id).collect();
    assert_eq!((a_users.len(), b_users.len()), (3, 1));
    assert!(a_users.is_disjoint(&b_users));

    // Lookups by B's email or id, asked as A, find nothing.
    assert!(store.user_by_email(ta, &b.admin_email).await.unwrap().is_none());
    assert!(store.user_by_id(ta, b_admin.id).await.unwrap().is_none());
    for prefix in ["admin@", "admin@tenant-b", ""] {
        let found = store.list_users(ta, Some(prefix), None, 100).await.unwrap();
        assert!(found.iter().all(|u| a_users.contains(&u.id)), "prefix {prefix:?} returned another tenant's user");
    }
    assert_eq!(store.count_active_admins(ta).await.unwrap(), 1);

    // Keys and events.
    let a_kids: BTreeSet<String> = store.signing_keys(ta).await.unwrap().into_iter().map(|k| k.kid).collect();
    let b_kids: BTreeSet<String> = store.signing_keys(tb).await.unwrap().into_iter().map(|k| k.kid).collect();
    assert_eq!((a_kids.len(), b_kids.len()), (1, 1));
    assert!(a_kids.is_disjoint(&b_kids));
    let a_events = store.audit_events(ta, &AuditFilter::default(), None, 100).await.unwrap();
    let b_events = store.audit_events(tb, &AuditFilter::default(), None, 100).await.unwrap();
    assert!(!a_events.is_empty() && !b_events.is_empty());
    let b_ids: HashSet<EventId> = b_events.iter().map(|e| e.id).collect();
    assert!(a_events.iter().all(|e| !b_ids.contains(&e.id)), "A's audit log holds B's events");
    let by_b_user = AuditFilter { user_id: Some(b_admin.id), ..AuditFilter::default() };
    assert!(store.audit_events(ta, &by_b_user, None, 100).await.unwrap().is_empty());

    // Writes through A's handle cannot reach B's rows.
    let change = UserChange { disabled: Some(true), ..UserChange::default() };
    let event = AuditEvent {
        id: EventId::new(),
        at: chrono::Utc::now(),
        kind: "user.disabled".into(),
        actor_id: None,
        subject_id: Some(b_admin.id),
        ip: None,
        user_agent: None,
        request_id: None,
        detail: None,
    };
    assert!(store.update_user(ta, b_admin.id, &change, Some(&event)).await.unwrap().is_none());
    assert!(!store.user_by_id(tb, b_admin.id).await.unwrap().unwrap().disabled);
    let purged = store.purge_audit_events(ta, chrono::Utc::now() + chrono::Duration::days(1)).await.unwrap();
    assert!(purged as usize >= a_events.len(), "purged {purged} of A's {} events", a_events.len());
    assert!(store.audit_events(ta, &AuditFilter::default(), None, 100).await.unwrap().is_empty());
    let b_after = store.audit_events(tb, &AuditFilter::default(), None, 100).await.unwrap();
    assert_eq!(b_after.len(), b_events.len(), "purging A's events removed some of B's");
}
both!(store_reads_for_one_tenant_never_return_another_tenants_rows, store_reads_are_tenant_scoped);
