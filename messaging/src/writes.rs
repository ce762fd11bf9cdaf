//! The writes that end a transaction, sent to the database together.
//!
//! A batch's transaction reads first (inbox claim, rows locked and loaded) and then only
//! writes: the rows its decisions changed, its outbox rows, the record of the rows the relay
//! sent. Nothing before the commit needs what those writes answer, so they need not wait
//! for each other: [`Writes`] gathers them, each an `INSERT` or `UPDATE` written as if
//! alone (placeholders `$1`, `$2`, … in the order its values are bound), and sends them as
//! the data-modifying `WITH` queries of one statement: one round trip for all of them
//! instead of one each. On this machine a round trip costs the database and the service
//! more CPU than most of these statements do.
//!
//! The parts of one statement see the same snapshot and none sees another's rows, so the
//! parts of a [`Writes`] must touch different rows (each table's changed rows once, new
//! outbox rows, rows sent before this transaction). Foreign keys are checked when the whole
//! statement ends, so a part may insert rows that reference rows another part inserts.
//! Parts are gathered into statements of at most [`crate::chunks::STATEMENT_BYTES`] (a
//! part larger than that is a statement of its own), which each leave in one write.

use sqlx::error::BoxDynError;
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, Encode, PgConnection, Postgres, Type};

use crate::chunks::STATEMENT_BYTES;

/// Data-modifying statements to run together, in as few round trips as their size allows.
#[derive(Default)]
pub struct Writes {
    statements: Vec<Statement>,
    /// Parts added whose affected rows are counted: the count slot each fills.
    counted: usize,
}

impl std::fmt::Debug for Writes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writes")
            .field("statements", &self.statements.len())
            .field("parts", &self.parts())
            .finish()
    }
}

/// One statement being gathered: its `WITH` queries so far and their values.
#[derive(Default)]
struct Statement {
    with: String,
    args: PgArguments,
    params: usize,
    parts: usize,
    bytes: usize,
    /// (name of the `WITH` query, count slot) of the counted parts.
    counted: Vec<(String, usize)>,
}

/// The values one part binds, in the order of its placeholders.
pub struct Binds<'a> {
    args: &'a mut PgArguments,
    added: usize,
}

impl<'a> Binds<'a> {
    /// Binds the next placeholder of the part.
    pub fn add<'q, T>(&mut self, value: T) -> Result<(), BoxDynError>
    where
        T: Encode<'q, Postgres> + Type<Postgres> + Send + 'q,
    {
        self.args.add(value)?;
        self.added += 1;
        Ok(())
    }
}

/// Where the affected-row count of a counted part is, in what [`Writes::execute`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted(usize);

/// The affected-row counts of the counted parts.
#[derive(Debug, Default)]
pub struct Counts(Vec<u64>);

impl Counts {
    pub fn get(&self, counted: Counted) -> u64 {
        self.0.get(counted.0).copied().unwrap_or(0)
    }
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    /// How many parts were added.
    pub fn parts(&self) -> usize {
        self.statements.iter().map(|s| s.parts).sum()
    }

    /// Adds one `INSERT`, `UPDATE` or `DELETE` (`sql`, with no `$` but its placeholders),
    /// about `bytes` long with its values, whose values `bind` adds in placeholder order.
    pub fn add(
        &mut self,
        sql: &'static str,
        bytes: usize,
        bind: impl FnOnce(&mut Binds<'_>) -> Result<(), BoxDynError>,
    ) -> sqlx::Result<()> {
        self.push(sql, bytes, bind, false).map(|_| ())
    }

    /// [`Writes::add`] for a part whose rows are counted: `sql` ends with a `RETURNING`
    /// clause, and the number of rows it returns is in the [`Counts`] at the [`Counted`].
    pub fn add_counted(
        &mut self,
        sql: &'static str,
        bytes: usize,
        bind: impl FnOnce(&mut Binds<'_>) -> Result<(), BoxDynError>,
    ) -> sqlx::Result<Counted> {
        self.push(sql, bytes, bind, true)
    }

    fn push(
        &mut self,
        sql: &'static str,
        bytes: usize,
        bind: impl FnOnce(&mut Binds<'_>) -> Result<(), BoxDynError>,
        counted: bool,
    ) -> sqlx::Result<Counted> {
        let fits = self
            .statements
            .last()
            .is_some_and(|s| s.bytes + bytes <= STATEMENT_BYTES);
        if !fits {
            self.statements.push(Statement::default());
        }
        let Some(statement) = self.statements.last_mut() else {
            unreachable!("a statement was pushed above");
        };
        let mut binds = Binds {
            args: &mut statement.args,
            added: 0,
        };
        bind(&mut binds).map_err(sqlx::Error::Encode)?;
        let added = binds.added;
        let (renumbered, highest) = renumber(sql, statement.params);
        if highest != statement.params + added {
            return Err(sqlx::Error::Protocol(format!(
                "a write binds {added} values for placeholders up to ${}: {sql}",
                highest.saturating_sub(statement.params)
            )));
        }
        let name = format!("w{}", statement.parts);
        statement
            .with
            .push_str(if statement.parts == 0 { "WITH " } else { ", " });
        statement.with.push_str(&name);
        statement.with.push_str(" AS (");
        statement.with.push_str(&renumbered);
        statement.with.push(')');
        statement.params += added;
        statement.parts += 1;
        statement.bytes += bytes;
        let slot = Counted(self.counted);
        if counted {
            statement.counted.push((name, self.counted));
            self.counted += 1;
        }
        Ok(slot)
    }

    /// Runs every part on `conn` (inside the caller's transaction), one statement per
    /// [`STATEMENT_BYTES`], and returns the counts of the counted parts.
    pub async fn execute(self, conn: &mut PgConnection) -> sqlx::Result<Counts> {
        let mut counts = vec![0; self.counted];
        for statement in self.statements {
            let selected: Vec<String> = statement
                .counted
                .iter()
                .map(|(name, _)| format!("(SELECT count(*) FROM {name})"))
                .collect();
            let sql = format!(
                "{} SELECT ARRAY[{}]::int8[]",
                statement.with,
                selected.join(", ")
            );
            // Not a checked macro: the statement is put together at run time from the
            // parts of the batch (their own `&'static str`) and names this module makes;
            // every value travels as a bound parameter.
            let returned: Vec<i64> =
                sqlx::query_scalar_with(sqlx::AssertSqlSafe(sql), statement.args)
                    .fetch_one(&mut *conn)
                    .await?;
            for ((_, slot), n) in statement.counted.iter().zip(returned) {
                counts[*slot] = u64::try_from(n).unwrap_or(0);
            }
        }
        Ok(Counts(counts))
    }
}

/// `sql` with every placeholder `$n` made `$(n + offset)`, and the highest placeholder
/// after the shift (`offset` when there is none).
fn renumber(sql: &str, offset: usize) -> (String, usize) {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut highest = offset;
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits].parse::<usize>() {
            Ok(n) => {
                let n = n + offset;
                highest = highest.max(n);
                out.push('$');
                out.push_str(&n.to_string());
            }
            // A `$` that starts no placeholder stays as it is.
            Err(_) => out.push('$'),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    (out, highest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_shifted_past_the_parts_before() {
        assert_eq!(
            renumber(
                "INSERT INTO t SELECT * FROM UNNEST($1::int8[], $2::text[])",
                3
            ),
            (
                "INSERT INTO t SELECT * FROM UNNEST($4::int8[], $5::text[])".to_owned(),
                5
            )
        );
        assert_eq!(
            renumber("UPDATE t SET a = $2 WHERE id = ANY($1) AND id = $1", 10),
            (
                "UPDATE t SET a = $12 WHERE id = ANY($11) AND id = $11".to_owned(),
                12
            )
        );
        assert_eq!(
            renumber("DELETE FROM t", 7),
            ("DELETE FROM t".to_owned(), 7)
        );
    }

    #[test]
    fn parts_gather_into_statements_of_a_bounded_size() {
        let mut writes = Writes::default();
        for _ in 0..3 {
            writes
                .add("INSERT INTO t VALUES ($1)", STATEMENT_BYTES / 2, |b| {
                    b.add(1_i64)
                })
                .unwrap();
        }
        assert_eq!(writes.parts(), 3);
        assert_eq!(writes.statements.len(), 2);
        assert_eq!(
            writes.statements[0].with,
            "WITH w0 AS (INSERT INTO t VALUES ($1)), w1 AS (INSERT INTO t VALUES ($2))"
        );
        assert_eq!(
            writes.statements[1].with,
            "WITH w0 AS (INSERT INTO t VALUES ($1))"
        );
    }

    #[test]
    fn a_part_that_binds_too_few_values_is_refused() {
        let mut writes = Writes::default();
        let refused = writes.add("INSERT INTO t VALUES ($1, $2)", 10, |b| b.add(1_i64));
        assert!(
            matches!(refused, Err(sqlx::Error::Protocol(_))),
            "{refused:?}"
        );
    }
}
