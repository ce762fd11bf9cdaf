//! The repository's docs as the checks read and rewrite them: a file by its path from the
//! repository's root, the parts of it that are derived from the code (text between
//! `<!-- BEGIN GENERATED: name -->` markers, a table's cell, a diagram's edge label, a
//! line of an example), and the one way a check ends: with `UPDATE_DOCS=1` it writes what
//! the code says, otherwise it fails, naming the command that does.

use std::path::PathBuf;

/// `rel`, a path from the repository's root.
pub(crate) fn path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

pub(crate) fn read(rel: &str) -> String {
    std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// `UPDATE_DOCS=1`: writes `want` over `rel` when it differs. Otherwise fails unless the
/// file already holds `want`, saying how to regenerate it with `module`'s checks.
pub(crate) fn keep(rel: &str, committed: &str, want: &str, module: &str) {
    if committed == want {
        return;
    }
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(path(rel), want).unwrap_or_else(|e| panic!("writing {rel}: {e}"));
        return;
    }
    let first = committed
        .lines()
        .zip(want.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| committed.lines().count().min(want.lines().count()));
    let line = |text: &str| text.lines().nth(first).unwrap_or("").to_owned();
    panic!(
        "{rel} is out of date with the code; regenerate it with \
         `UPDATE_DOCS=1 cargo test -p saga-tests --test checks {module}` and commit the result.\n\
         First difference, line {}:\n  committed: {}\n  generated: {}",
        first + 1,
        line(committed),
        line(want)
    );
}

/// `doc` with the text between `<!-- BEGIN GENERATED: name -->` and
/// `<!-- END GENERATED: name -->` replaced by `body`.
pub(crate) fn splice(doc: &str, name: &str, body: &str) -> Result<String, String> {
    let begin = format!("<!-- BEGIN GENERATED: {name} -->\n");
    let end = format!("<!-- END GENERATED: {name} -->");
    match (doc.find(&begin), doc.find(&end)) {
        (Some(b), Some(e)) if b < e => Ok(format!("{}{begin}{body}{}", &doc[..b], &doc[e..])),
        _ => Err(format!("lacks the markers `{begin}` … `{end}`")),
    }
}

/// The cells of a Markdown table row, trimmed; `\|` is part of a cell.
fn cells(row: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cell = String::new();
    let mut chars = row.trim().trim_start_matches('|').chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cell.push('\\');
                cell.push(chars.next().unwrap_or('|'));
            }
            '|' => out.push(std::mem::take(&mut cell).trim().to_owned()),
            c => cell.push(c),
        }
    }
    if !cell.trim().is_empty() {
        out.push(cell.trim().to_owned());
    }
    out
}

/// `doc` with its line number `locate` answers replaced by what `replace` makes of it.
fn replace_line(
    doc: &str,
    locate: impl FnOnce(&[&str]) -> Result<usize, String>,
    replace: impl FnOnce(&str) -> Result<String, String>,
) -> Result<String, String> {
    let mut lines: Vec<String> = doc.lines().map(str::to_owned).collect();
    let at = {
        let view: Vec<&str> = lines.iter().map(String::as_str).collect();
        locate(&view)?
    };
    let line = lines
        .get_mut(at)
        .ok_or_else(|| format!("ends before line {}", at + 1))?;
    *line = replace(line)?;
    let mut text = lines.join("\n");
    if doc.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// `doc` with cell `column` (0 is the first) of one row set to `text`: the row whose first
/// cell is `row`, in the table whose header line starts with `header`.
pub(crate) fn set_cell(
    doc: &str,
    header: &str,
    row: &str,
    column: usize,
    text: &str,
) -> Result<String, String> {
    let locate = |lines: &[&str]| {
        let start = lines
            .iter()
            .position(|l| l.starts_with(header))
            .ok_or_else(|| format!("has no table headed `{header}`"))?;
        lines[start + 1..]
            .iter()
            .take_while(|l| l.starts_with('|'))
            .position(|l| cells(l).first().map(String::as_str) == Some(row))
            .map(|i| start + 1 + i)
            .ok_or_else(|| format!("has no row `{row}` in the table headed `{header}`"))
    };
    replace_line(doc, locate, |line| {
        let mut row_cells = cells(line);
        let cell = row_cells
            .get_mut(column)
            .ok_or_else(|| format!("has no column {column} in the row `{row}`"))?;
        *cell = text.to_owned();
        Ok(format!("| {} |", row_cells.join(" | ")))
    })
}

/// `doc` with the label of the Mermaid edge `from -- "label" --> to` set to `label`.
pub(crate) fn set_edge_label(
    doc: &str,
    from: &str,
    to: &str,
    label: &str,
) -> Result<String, String> {
    let head = format!("{from} -- \"");
    let tail = format!("\" --> {to}");
    let locate = |lines: &[&str]| {
        lines
            .iter()
            .position(|l| l.trim_start().starts_with(&head) && l.ends_with(&tail))
            .ok_or_else(|| format!("has no diagram edge `{from} -- \"…\" --> {to}`"))
    };
    replace_line(doc, locate, |line| {
        let indent = &line[..line.len() - line.trim_start().len()];
        Ok(format!("{indent}{head}{label}{tail}"))
    })
}

/// `doc` with the `n`th line after the line `anchor` (1: the next) set to `text`.
pub(crate) fn set_line_after(
    doc: &str,
    anchor: &str,
    n: usize,
    text: &str,
) -> Result<String, String> {
    let locate = |lines: &[&str]| {
        lines
            .iter()
            .position(|l| *l == anchor)
            .map(|at| at + n)
            .ok_or_else(|| format!("has no line `{anchor}`"))
    };
    replace_line(doc, locate, |_| Ok(text.to_owned()))
}

#[test]
fn a_cell_is_set_by_its_row_and_column_and_escaped_bars_stay_in_their_cell() {
    let doc =
        "text\n\n| user | publish |\n|---|---|\n| `a` | `^(x\\|y)$` |\n| `b` | old |\n\nmore\n";
    let set = set_cell(doc, "| user |", "`b`", 1, "`^(z\\|w)$`").unwrap();
    assert_eq!(
        set,
        "text\n\n| user | publish |\n|---|---|\n| `a` | `^(x\\|y)$` |\n| `b` | `^(z\\|w)$` |\n\nmore\n"
    );
    assert!(set_cell(doc, "| user |", "`c`", 1, "x").is_err());
    assert!(set_cell(doc, "| queue |", "`a`", 1, "x").is_err());
}

#[test]
fn an_edge_label_and_a_line_are_set_in_place() {
    let doc = "    ex -- \"a, b\" --> q1\n    ex -- \"c\" --> q2\nrun \\\n  old\n";
    let set = set_edge_label(doc, "ex", "q2", "d<br>e").unwrap();
    assert_eq!(
        set,
        "    ex -- \"a, b\" --> q1\n    ex -- \"d<br>e\" --> q2\nrun \\\n  old\n"
    );
    let set = set_line_after(&set, "run \\", 1, "  new").unwrap();
    assert!(set.ends_with("run \\\n  new\n"));
    assert!(set_edge_label(doc, "ex", "q3", "x").is_err());
}
