use super::*;

fn files(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(path, text)| ((*path).to_owned(), (*text).to_owned()))
        .collect()
}

const INIT: &str = "CREATE TABLE orders (id UUID PRIMARY KEY, note TEXT);\n";
const EXPAND: &str = "ALTER TABLE orders ADD COLUMN placed_by TEXT;\n";

/// The previous release: order-svc's first migration and an expand after it.
fn previous() -> BTreeMap<String, String> {
    files(&[
        ("order-svc/migrations/1000_orders.sql", INIT),
        ("order-svc/migrations/1001_placed_by.sql", EXPAND),
    ])
}

/// The breaks of the previous release's migrations plus a new one with `sql`.
fn with_new(sql: &str) -> Vec<String> {
    let mut new = previous();
    new.insert(
        "order-svc/migrations/1002_next.sql".to_owned(),
        sql.to_owned(),
    );
    check_migrations(&previous(), &new)
}

/// What `breaking_statements` finds in `sql`, as (line, what).
fn found(sql: &str) -> Vec<(usize, String)> {
    breaking_statements(sql)
        .into_iter()
        .map(|f| (f.line, f.what))
        .collect()
}

#[test]
fn only_files_under_a_migrations_directory_count() {
    assert!(is_migration_path("order-svc/migrations/1000_orders.sql"));
    assert!(is_migration_path("messaging/migrations/0001_messaging.sql"));
    assert!(!is_migration_path("order-svc/migrations/README.md"));
    assert!(!is_migration_path(
        "docs/order-svc/migrations/1000_orders.sql"
    ));
}

#[test]
fn the_same_migrations_have_no_break() {
    assert_eq!(
        check_migrations(&previous(), &previous()),
        Vec::<String>::new()
    );
}

#[test]
fn a_changed_or_removed_migration_of_the_previous_release_is_a_break() {
    let mut new = previous();
    new.insert(
        "order-svc/migrations/1000_orders.sql".to_owned(),
        format!("{INIT}-- one more comment\n"),
    );
    new.remove("order-svc/migrations/1001_placed_by.sql");
    let problems = check_migrations(&previous(), &new);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].starts_with("order-svc/migrations/1000_orders.sql: changed since"));
    assert!(problems[1].starts_with("order-svc/migrations/1001_placed_by.sql: removed"));
}

#[test]
fn an_expand_migration_passes() {
    let expand = "-- Expand: where an order came from.\n\
        ALTER TABLE orders ADD COLUMN channel TEXT;\n\
        ALTER TABLE orders ADD COLUMN attempts INT NOT NULL DEFAULT 0,\n\
            ADD COLUMN seq BIGINT GENERATED ALWAYS AS IDENTITY;\n\
        CREATE TABLE refunds (id UUID PRIMARY KEY, amount BIGINT NOT NULL);\n\
        CREATE INDEX orders_by_channel ON orders (channel);\n\
        ALTER TABLE orders ALTER COLUMN note DROP NOT NULL, ADD CONSTRAINT c CHECK (attempts >= 0);\n\
        INSERT INTO refunds VALUES (gen_random_uuid(), 0) ON CONFLICT DO NOTHING;\n";
    assert_eq!(with_new(expand), Vec::<String>::new());
}

#[test]
fn each_breaking_statement_is_named_with_its_line() {
    let sql = "ALTER TABLE orders DROP COLUMN note;\n\
        DROP TABLE legacy;\n\
        ALTER TABLE orders RENAME COLUMN note TO remark;\n\
        alter table orders rename to purchases;\n\
        ALTER TABLE orders\n    ALTER COLUMN total TYPE NUMERIC,\n    ALTER note SET NOT NULL;\n\
        ALTER TABLE orders ADD COLUMN placed_at TIMESTAMPTZ NOT NULL;\n\
        ALTER TABLE orders ALTER COLUMN state DROP DEFAULT, DROP legacy_flag;\n";
    assert_eq!(
        found(sql),
        [
            (1, "drops a column".to_owned()),
            (2, "drops a table".to_owned()),
            (3, "renames a column".to_owned()),
            (4, "renames a table".to_owned()),
            (6, "changes a column's type".to_owned()),
            (7, "sets a column NOT NULL".to_owned()),
            (8, "adds a NOT NULL column without a default".to_owned()),
            (9, "drops a column's default".to_owned()),
            (9, "drops a column".to_owned()),
        ]
    );
}

#[test]
fn a_break_is_reported_with_file_line_and_statement() {
    let sql = "-- Tidy up.\nALTER TABLE orders\n  DROP COLUMN   note;\n";
    assert_eq!(
        with_new(sql),
        [
            "order-svc/migrations/1002_next.sql:3: drops a column: ALTER TABLE orders DROP COLUMN note"
        ]
    );
}

#[test]
fn comments_strings_and_function_bodies_are_not_statements() {
    let sql = "-- DROP TABLE orders;\n\
        /* ALTER TABLE orders DROP COLUMN note; /* nested */ still a comment */\n\
        INSERT INTO notes VALUES ('ALTER TABLE orders DROP COLUMN note;');\n\
        CREATE FUNCTION f() RETURNS void AS $body$ BEGIN DROP TABLE scratch; END $body$ LANGUAGE plpgsql;\n\
        ALTER TABLE \"drop\" ADD COLUMN \"NOT\" TEXT;\n\
        ALTER TABLE orders DROP note;\n";
    assert_eq!(found(sql), [(6, "drops a column".to_owned())]);
}

#[test]
fn a_contract_step_of_a_shipped_expand_may_break() {
    let contract = "-- Contract of: 1001_placed_by.sql (every writer fills it since then)\n\
        ALTER TABLE orders ALTER COLUMN placed_by SET NOT NULL;\n\
        ALTER TABLE orders DROP COLUMN note;\n";
    assert_eq!(with_new(contract), Vec::<String>::new());
    assert_eq!(
        contract_markers(contract),
        [(1, "1001_placed_by.sql".to_owned())]
    );
}

#[test]
fn a_marker_naming_no_migration_of_the_previous_release_fails_and_allows_nothing() {
    let problems = with_new(
        "-- contract of: 1002_next.sql\n\
        ALTER TABLE orders DROP COLUMN note;\n",
    );
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].starts_with(
            "order-svc/migrations/1002_next.sql:1: `contract of: 1002_next.sql` names no \
             migration of the previous release in order-svc/migrations/"
        ),
        "{problems:?}"
    );
    assert!(problems[1].contains(":2: drops a column"), "{problems:?}");

    // An expand of another database does not count.
    let mut new = previous();
    new.insert(
        "payment-svc/migrations/1001_drop.sql".to_owned(),
        "-- contract of: 1001_placed_by.sql\nDROP TABLE payments;\n".to_owned(),
    );
    let problems = check_migrations(&previous(), &new);
    assert_eq!(problems.len(), 2, "{problems:?}");
}
