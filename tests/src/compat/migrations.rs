//! Migrations against the previous release's. Its binaries run on the database this
//! release migrates, so:
//!
//! - a migration file of the previous release must be byte for byte the same: it is
//!   applied on every database that release ran, and sqlx refuses to start when an applied
//!   migration changed (checksum) or is gone;
//! - a new migration must not drop a table, column, view, type or function, rename
//!   anything, change a column's type, drop its default, set it NOT NULL or add a NOT NULL
//!   column without a default,
//!   unless it declares itself the contract step of an expand that shipped in an earlier
//!   release, with a comment `-- contract of: <file>` naming a migration of the same
//!   directory that the previous release has.
//!
//! The scan is lexical: comments are stripped, quoted strings and dollar-quoted bodies
//! (functions, `DO` blocks) are opaque, statements split at `;` and an `ALTER TABLE`'s
//! actions at its top-level commas; keywords match case-insensitively.

use std::collections::BTreeMap;

/// The marker that declares a migration the contract step of an earlier expand.
pub const CONTRACT_MARKER: &str = "contract of:";

/// Whether `path` (relative to the repository root) is a migration: `<dir>/migrations/*.sql`.
pub fn is_migration_path(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    matches!(parts.as_slice(), [_, "migrations", file] if file.ends_with(".sql"))
}

/// A statement of a migration that the previous release's binaries cannot run beside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The 1-based line of the offending keyword.
    pub line: usize,
    /// What the statement does, e.g. "drops a column".
    pub what: String,
    /// The statement, comments stripped and whitespace collapsed.
    pub statement: String,
}

/// Every break of the migrations `new` (path → content) against `old`, the previous
/// release's.
pub fn check_migrations(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (path, text) in old {
        match new.get(path) {
            None => problems.push(format!(
                "{path}: removed; the previous release applied it, and sqlx refuses to start \
                 on a database where an applied migration is missing"
            )),
            Some(now) if now != text => problems.push(format!(
                "{path}: changed since the previous release; sqlx refuses to start on a \
                 database where it was applied (checksum mismatch): put the change in a new \
                 migration"
            )),
            Some(_) => {}
        }
    }
    for (path, text) in new.iter().filter(|(p, _)| !old.contains_key(*p)) {
        let (dir, _) = path.rsplit_once('/').unwrap_or(("", path));
        let mut declared = false;
        for (line, expand) in contract_markers(text) {
            if old.contains_key(&format!("{dir}/{expand}")) {
                declared = true;
            } else {
                problems.push(format!(
                    "{path}:{line}: `{CONTRACT_MARKER} {expand}` names no migration of the \
                     previous release in {dir}/: a contract step must follow an expand that \
                     has already shipped"
                ));
            }
        }
        if declared {
            continue;
        }
        for finding in breaking_statements(text) {
            problems.push(format!(
                "{path}:{}: {}: {}",
                finding.line, finding.what, finding.statement
            ));
        }
    }
    problems
}

/// The migrations a `-- contract of: <file>` comment of `sql` names, with their lines.
pub fn contract_markers(sql: &str) -> Vec<(usize, String)> {
    sql.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let (_, comment) = line.split_once("--")?;
            let comment = comment.trim();
            let prefix = comment.get(..CONTRACT_MARKER.len())?;
            if !prefix.eq_ignore_ascii_case(CONTRACT_MARKER) {
                return None;
            }
            let name = comment[CONTRACT_MARKER.len()..].split_whitespace().next()?;
            let name = name.rsplit('/').next().unwrap_or(name);
            Some((i + 1, name.to_owned()))
        })
        .collect()
}

/// A token of SQL: a word (keyword, identifier or number, upper-cased in `upper`), a quoted
/// literal or identifier (kept whole, never a keyword), or one punctuation character.
#[derive(Debug, Clone)]
struct Token {
    text: String,
    upper: String,
    line: usize,
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '$' | '.')
}

/// The tokens of `sql`, comments dropped.
fn tokens(sql: &str) -> Vec<Token> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let newlines = |from: &[char]| from.iter().filter(|c| **c == '\n').count();
    while i < chars.len() {
        let c = chars[i];
        let rest = &chars[i..];
        let start_line = line;
        let end = if c.is_whitespace() {
            i + 1
        } else if rest.starts_with(&['-', '-']) {
            rest.iter()
                .position(|c| *c == '\n')
                .map_or(chars.len(), |p| i + p)
        } else if rest.starts_with(&['/', '*']) {
            block_comment_end(&chars, i)
        } else if c == '\'' || c == '"' {
            quoted_end(&chars, i, c)
        } else if c == '$' && dollar_tag(rest).is_some() {
            let tag = dollar_tag(rest).unwrap_or_default();
            let body = i + tag.len();
            find(&chars, body, &tag).map_or(chars.len(), |p| p + tag.len())
        } else if is_word_char(c) {
            i + rest
                .iter()
                .position(|c| !is_word_char(*c))
                .unwrap_or(rest.len())
        } else {
            i + 1
        };
        let text: String = chars[i..end].iter().collect();
        line += newlines(&chars[i..end]);
        let comment = text.starts_with("--") || text.starts_with("/*");
        if !comment && !text.trim().is_empty() {
            let upper = if is_word_char(c) {
                text.to_ascii_uppercase()
            } else {
                text.clone()
            };
            out.push(Token {
                text,
                upper,
                line: start_line,
            });
        }
        i = end;
    }
    out
}

/// The end of the block comment starting at `start` (PostgreSQL's nest).
fn block_comment_end(chars: &[char], start: usize) -> usize {
    let (mut depth, mut i) = (0, start);
    while i + 1 < chars.len() {
        match (chars[i], chars[i + 1]) {
            ('/', '*') => (depth, i) = (depth + 1, i + 2),
            ('*', '/') => {
                (depth, i) = (depth - 1, i + 2);
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    chars.len()
}

/// The end of the literal quoted by `quote` starting at `start` (a doubled quote escapes).
fn quoted_end(chars: &[char], start: usize, quote: char) -> usize {
    let mut i = start + 1;
    while i < chars.len() {
        if chars[i] == quote {
            if chars.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    chars.len()
}

/// The `$tag$` (or `$$`) opening a dollar-quoted string at the start of `rest`.
fn dollar_tag(rest: &[char]) -> Option<Vec<char>> {
    let close = rest[1..].iter().position(|c| *c == '$')? + 1;
    let tag = &rest[..=close];
    tag[1..close]
        .iter()
        .all(|c| c.is_alphanumeric() || *c == '_')
        .then(|| tag.to_vec())
        .filter(|_| !rest.get(1).is_some_and(char::is_ascii_digit))
}

fn find(chars: &[char], from: usize, needle: &[char]) -> Option<usize> {
    (from..chars.len().saturating_sub(needle.len() - 1)).find(|&i| chars[i..].starts_with(needle))
}

/// `tokens` as one line of text.
fn render(tokens: &[Token]) -> String {
    let mut text = String::new();
    for (i, token) in tokens.iter().enumerate() {
        let tight = matches!(token.text.as_str(), "," | ")" | ":")
            || (i > 0 && matches!(tokens[i - 1].text.as_str(), "(" | ":"));
        if i > 0 && !tight {
            text.push(' ');
        }
        text.push_str(&token.text);
    }
    const LONGEST: usize = 160;
    if text.chars().count() > LONGEST {
        text = text.chars().take(LONGEST).collect::<String>() + " …";
    }
    text
}

/// The statements of `sql` that the previous release's binaries cannot run beside.
pub fn breaking_statements(sql: &str) -> Vec<Finding> {
    let tokens = tokens(sql);
    let mut findings = Vec::new();
    for statement in tokens.split(|t| t.text == ";").filter(|s| !s.is_empty()) {
        let words: Vec<&str> = statement.iter().map(|t| t.upper.as_str()).collect();
        let alter_table = words.starts_with(&["ALTER", "TABLE"]);
        let mut depth = 0i32;
        let mut clauses: Vec<&[Token]> = Vec::new();
        let mut start = 0;
        for (i, token) in statement.iter().enumerate() {
            match token.text.as_str() {
                "(" => depth += 1,
                ")" => depth -= 1,
                "," if depth == 0 => {
                    clauses.push(&statement[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        clauses.push(&statement[start..]);
        for clause in clauses {
            for (at, what) in clause_breaks(clause, &words, alter_table) {
                findings.push(Finding {
                    line: clause[at].line,
                    what,
                    statement: render(statement),
                });
            }
        }
    }
    findings
}

/// The breaks in one action of a statement (`words`: the whole statement's), each with the
/// index in `clause` of its keyword.
fn clause_breaks(clause: &[Token], statement: &[&str], alter_table: bool) -> Vec<(usize, String)> {
    let w: Vec<&str> = clause.iter().map(|t| t.upper.as_str()).collect();
    let at = |i: usize| w.get(i).copied().unwrap_or("");
    let object = statement
        .get(1)
        .map_or("object", |o| o)
        .to_ascii_lowercase();
    let article = if object.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    let mut found = Vec::new();
    for i in 0..w.len() {
        match (w[i], at(i + 1)) {
            ("DROP", next) if alter_table && !KEPT_BY_DROP.contains(&next) => {
                found.push((i, "drops a column".to_owned()));
            }
            ("DROP", next) if i == 0 && DROPPED_OBJECTS.contains(&next) => {
                found.push((i, format!("drops {article} {}", next.to_ascii_lowercase())));
            }
            ("RENAME", next) => {
                let what = match next {
                    "TO" => format!("renames {article} {object}"),
                    "CONSTRAINT" => "renames a constraint".to_owned(),
                    "VALUE" => "renames an enum value".to_owned(),
                    "COLUMN" => "renames a column".to_owned(),
                    _ if alter_table => "renames a column".to_owned(),
                    _ => format!("renames something of {article} {object}"),
                };
                found.push((i, what));
            }
            ("ALTER", next) if alter_table && next != "TABLE" => {
                let column = if next == "COLUMN" { i + 2 } else { i + 1 };
                let after: Vec<&str> = w.iter().skip(column + 1).take(3).copied().collect();
                let what = match after.as_slice() {
                    ["TYPE", ..] | ["SET", "DATA", "TYPE"] => "changes a column's type",
                    ["SET", "NOT", "NULL"] => "sets a column NOT NULL",
                    ["DROP", "DEFAULT", ..] => "drops a column's default",
                    _ => continue,
                };
                found.push((i, what.to_owned()));
            }
            ("ADD", _) if alter_table => {
                if let Some(what) = added_column(&w[i + 1..]) {
                    found.push((i, what.to_owned()));
                }
            }
            _ => {}
        }
    }
    found
}

/// What `ALTER TABLE … DROP <word>` drops when it is not a column.
const KEPT_BY_DROP: &[&str] = &["CONSTRAINT", "DEFAULT", "EXPRESSION", "IDENTITY", "NOT"];

/// The objects a `DROP` statement removes that the previous release's queries may name
/// (an index, a trigger or a policy is not named by a query).
const DROPPED_OBJECTS: &[&str] = &[
    "FUNCTION",
    "MATERIALIZED",
    "PROCEDURE",
    "SCHEMA",
    "SEQUENCE",
    "TABLE",
    "TYPE",
    "VIEW",
];

/// Whether the `ADD` action whose words follow `ADD` adds a column old writers cannot fill.
fn added_column(w: &[&str]) -> Option<&'static str> {
    let mut w = w;
    if w.first() == Some(&"COLUMN") {
        w = &w[1..];
    }
    if w.starts_with(&["IF", "NOT", "EXISTS"]) {
        w = &w[3..];
    }
    let constraint = [
        "CONSTRAINT",
        "PRIMARY",
        "UNIQUE",
        "CHECK",
        "FOREIGN",
        "EXCLUDE",
    ];
    if w.first().is_none_or(|first| constraint.contains(first)) {
        return None;
    }
    let pairs = || w.windows(2);
    let not_null = pairs().any(|p| p == ["NOT", "NULL"] || p == ["PRIMARY", "KEY"]);
    let filled = w.iter().any(|word| {
        matches!(
            *word,
            "DEFAULT" | "GENERATED" | "SERIAL" | "BIGSERIAL" | "SMALLSERIAL"
        )
    });
    (not_null && !filled).then_some("adds a NOT NULL column without a default")
}

#[cfg(test)]
#[path = "migrations_tests.rs"]
mod tests;
