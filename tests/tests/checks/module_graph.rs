//! No two modules import each other, in any crate of the workspace: this reads the sources
//! of every crate (each library, binary and integration-test root), builds the graph of
//! references between its modules (`crate::a::b`, `super::x`, `self::x` and paths through a
//! child module such as `child::f`, in `use` lines and in code alike; comments and string
//! literals are skipped), and fails on any cycle, naming its modules.
//!
//! A reference counts from the module it is written in, inline modules (`mod tests { … }`)
//! included, to the deepest module its path names; a name a module re-exports (`pub use
//! a::X`) counts as the module it comes from. A module's references to its own ancestors
//! (`super::X`, `crate::X` of an item defined in the root) are not counted: a child module
//! is part of its parent's implementation, and the crate root is the crate's facade (it
//! declares the modules, re-exports and holds the entry point). So a cycle is always
//! between modules neither of which contains the other, such as two siblings.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The workspace's packages, by directory.
const PACKAGES: [&str; 9] = [
    "messaging",
    "events",
    "platform",
    "order-svc",
    "inventory-svc",
    "payment-svc",
    "sagactl",
    "bench",
    "tests",
];

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Rust source with comments, string and character literals blanked out (same length, so
/// nothing else moves).
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let blank = |out: &mut String, s: &[u8]| {
        for &c in s {
            out.push(if c == b'\n' { '\n' } else { ' ' });
        }
    };
    while i < b.len() {
        let rest = &b[i..];
        let end = if rest.starts_with(b"//") {
            rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len())
        } else if rest.starts_with(b"/*") {
            block_comment_len(rest)
        } else if rest.starts_with(b"r#") || rest.starts_with(b"r\"") {
            raw_string_len(rest)
        } else if rest[0] == b'"' {
            string_len(rest)
        } else if rest[0] == b'\'' {
            char_len(rest)
        } else {
            0
        };
        if end > 0 {
            blank(&mut out, &rest[..end]);
            i += end;
        } else {
            let ch = src[i..].chars().next().expect("in bounds");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn block_comment_len(s: &[u8]) -> usize {
    let mut depth = 0;
    let mut i = 0;
    while i + 1 < s.len() {
        if s[i..].starts_with(b"/*") {
            depth += 1;
            i += 2;
        } else if s[i..].starts_with(b"*/") {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    s.len()
}

fn raw_string_len(s: &[u8]) -> usize {
    let hashes = s[1..].iter().take_while(|&&c| c == b'#').count();
    if s.get(1 + hashes) != Some(&b'"') {
        return 0; // `r#ident`, not a string
    }
    let close: Vec<u8> = std::iter::once(b'"')
        .chain(std::iter::repeat_n(b'#', hashes))
        .collect();
    let body = 2 + hashes;
    s[body..]
        .windows(close.len())
        .position(|w| w == close.as_slice())
        .map_or(s.len(), |p| body + p + close.len())
}

fn string_len(s: &[u8]) -> usize {
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    s.len()
}

/// A character literal (`'a'`, `'\n'`, `'\u{1F600}'`), or 0 for a lifetime (`'a`).
fn char_len(s: &[u8]) -> usize {
    if s.get(1) == Some(&b'\\') {
        return s[2..].iter().position(|&c| c == b'\'').map_or(0, |p| p + 3);
    }
    let ch_len = std::str::from_utf8(&s[1..s.len().min(5)])
        .ok()
        .or_else(|| std::str::from_utf8(&s[1..s.len().min(2)]).ok())
        .and_then(|t| t.chars().next())
        .map_or(1, char::len_utf8);
    if s.get(1 + ch_len) == Some(&b'\'') {
        2 + ch_len
    } else {
        0
    }
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// One module: its path from the crate root (`[]` is the root) and, for a file module, the
/// file and the directory its `mod x;` children live in.
struct Crate {
    name: String,
    /// Module path → the source text (blanked) of the file holding it, and the byte range of
    /// the module in that text (the whole file, or an inline `mod x { … }` body).
    modules: BTreeMap<Vec<String>, (usize, std::ops::Range<usize>)>,
    files: Vec<String>,
}

impl Crate {
    fn load(name: String, root: &Path) -> Crate {
        let mut krate = Crate {
            name,
            modules: BTreeMap::new(),
            files: Vec::new(),
        };
        let dir = root
            .parent()
            .expect("a root file has a directory")
            .to_owned();
        krate.load_file(Vec::new(), root, &dir);
        krate
    }

    fn load_file(&mut self, path: Vec<String>, file: &Path, child_dir: &Path) {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        let text = code_only(&text);
        let index = self.files.len();
        self.files.push(text.clone());
        self.scan_module(path, index, 0..text.len(), child_dir);
    }

    /// Registers the module at `range` of file `index` and every module declared in it.
    fn scan_module(
        &mut self,
        path: Vec<String>,
        index: usize,
        range: std::ops::Range<usize>,
        child_dir: &Path,
    ) {
        self.modules.insert(path.clone(), (index, range.clone()));
        let text = self.files[index].clone();
        let body = &text[range.clone()];
        let mut depth = 0usize;
        let mut i = 0;
        let bytes = body.as_bytes();
        while i < bytes.len() {
            match bytes[i] {
                b'{' => depth += 1,
                b'}' => depth = depth.saturating_sub(1),
                b'm' if depth == 0 && starts_word(body, i, "mod") => {
                    let after = &body[i + 3..];
                    let name: String = after
                        .trim_start()
                        .chars()
                        .take_while(|&c| is_ident(c))
                        .collect();
                    let name_end = i + 3 + (after.len() - after.trim_start().len()) + name.len();
                    let next = body[name_end..].trim_start();
                    let mut child = path.clone();
                    child.push(name.clone());
                    if next.starts_with(';') {
                        let sub_dir = child_dir.join(&name);
                        let file = [child_dir.join(format!("{name}.rs")), sub_dir.join("mod.rs")]
                            .into_iter()
                            .find(|f| f.is_file());
                        if let Some(file) = file {
                            self.load_file(child, &file, &sub_dir);
                        }
                    } else if next.starts_with('{') {
                        let open = name_end + (body[name_end..].len() - next.len());
                        let close = matching_brace(body, open);
                        let start = range.start + open + 1;
                        self.scan_module(
                            child,
                            index,
                            start..range.start + close,
                            &child_dir.join(&name),
                        );
                        i = close;
                        continue;
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }

    /// Every absolute path each module refers to.
    fn references(&self) -> BTreeMap<Vec<String>, Vec<Vec<String>>> {
        self.modules
            .iter()
            .map(|(module, (index, range))| {
                let text = &self.files[*index][range.clone()];
                let own = own_text(text, module, &self.modules, range.start);
                let paths = referenced_paths(&own, module, &self.children(module));
                (module.clone(), paths)
            })
            .collect()
    }

    /// What each module re-exports: name → the module it comes from.
    fn reexports(&self) -> BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>> {
        let mut out: BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>> = BTreeMap::new();
        for (module, (index, range)) in &self.modules {
            let text = &self.files[*index][range.clone()];
            let own = own_text(text, module, &self.modules, range.start);
            for statement in pub_use_statements(&own) {
                for path in referenced_paths(statement, module, &self.children(module)) {
                    let target = self.deepest_module(&path);
                    if let Some(name) = path.get(target.len()) {
                        out.entry(module.clone())
                            .or_default()
                            .insert(name.clone(), target);
                    }
                }
            }
        }
        out
    }

    /// The edges of the graph: from each module to every other module it refers to.
    fn edges(&self) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
        let reexports = self.reexports();
        let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
        for (module, paths) in self.references() {
            let targets = edges.entry(module.clone()).or_default();
            for path in paths {
                let mut target = self.deepest_module(&path);
                if let Some(origin) = path
                    .get(target.len())
                    .and_then(|name| reexports.get(&target)?.get(name))
                {
                    target = origin.clone();
                }
                // Neither the module itself nor one of its ancestors.
                let counted = !module.starts_with(&target);
                if counted {
                    targets.insert(target);
                }
            }
        }
        edges
    }

    fn children(&self, module: &[String]) -> BTreeSet<String> {
        self.modules
            .keys()
            .filter(|k| k.len() == module.len() + 1 && k.starts_with(module))
            .map(|k| k[module.len()].clone())
            .collect()
    }

    fn deepest_module(&self, path: &[String]) -> Vec<String> {
        (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| self.modules.contains_key(p))
            .unwrap_or_default()
    }

    fn display(&self, module: &[String]) -> String {
        if module.is_empty() {
            format!("{} (crate root)", self.name)
        } else {
            format!("{}::{}", self.name, module.join("::"))
        }
    }
}

/// The `pub use …;` and `pub(…) use …;` statements of `text`.
fn pub_use_statements(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("pub") {
        let after = rest[at + 3..].trim_start();
        let after = match after.strip_prefix('(') {
            Some(r) => r.find(')').map_or("", |end| r[end + 1..].trim_start()),
            None => after,
        };
        let word_start = at == 0 || !rest[..at].chars().next_back().is_some_and(is_ident);
        if word_start && after.starts_with("use ") {
            let end = after.find(';').unwrap_or(after.len());
            out.push(&after[4..end]);
        }
        rest = &rest[at + 3..];
    }
    out
}

/// `text` without the bodies of the inline modules nested in it (they are modules of their
/// own).
fn own_text(
    text: &str,
    module: &[String],
    modules: &BTreeMap<Vec<String>, (usize, std::ops::Range<usize>)>,
    offset: usize,
) -> String {
    let mut own: Vec<u8> = text.as_bytes().to_vec();
    let index = modules[module].0;
    for (path, (i, range)) in modules {
        if *i == index && path.len() == module.len() + 1 && path.starts_with(module) {
            for b in &mut own[range.start - offset..range.end - offset] {
                if *b != b'\n' {
                    *b = b' ';
                }
            }
        }
    }
    String::from_utf8_lossy(&own).into_owned()
}

fn starts_word(text: &str, at: usize, word: &str) -> bool {
    text[at..].starts_with(word)
        && !text[..at].chars().next_back().is_some_and(is_ident)
        && !text[at + word.len()..].chars().next().is_some_and(is_ident)
}

fn matching_brace(text: &str, open: usize) -> usize {
    let mut depth = 0;
    for (i, c) in text[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return open + i;
                }
            }
            _ => {}
        }
    }
    text.len()
}

/// Every module path `text` (the code of `module`) refers to, absolute from the crate root.
fn referenced_paths(
    text: &str,
    module: &[String],
    children: &BTreeSet<String>,
) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    for (n, &(at, c)) in chars.iter().enumerate() {
        if !is_ident(c) || n > 0 && (is_ident(chars[n - 1].1) || preceded_by_path(text, at)) {
            continue;
        }
        let word: String = text[at..].chars().take_while(|&c| is_ident(c)).collect();
        let after = &text[at + word.len()..];
        if !after.trim_start().starts_with("::") {
            continue;
        }
        let base: Vec<String> = match word.as_str() {
            "crate" => Vec::new(),
            "self" => module.to_vec(),
            "super" => module[..module.len().saturating_sub(1)].to_vec(),
            w if children.contains(w) => {
                let mut p = module.to_vec();
                p.push(w.to_owned());
                p
            }
            _ => continue,
        };
        let rest = after.trim_start()[2..].trim_start();
        for tail in path_tails(rest) {
            let mut p = base.clone();
            let mut tail = tail;
            // `super::super::x`
            while tail.first().is_some_and(|s| s == "super") {
                p.pop();
                tail.remove(0);
            }
            p.extend(tail);
            out.push(p);
        }
    }
    out
}

/// Whether the identifier at `at` continues a path (`a::b`: `b` is not a path's start).
fn preceded_by_path(text: &str, at: usize) -> bool {
    text[..at].trim_end().ends_with("::")
}

/// The segment lists after a path's first `::`: one for `a::b::C`, several for a group
/// `{a::B, c}` (nested groups flattened to their prefixes).
fn path_tails(rest: &str) -> Vec<Vec<String>> {
    if let Some(group) = rest.strip_prefix('{') {
        let close = matching_brace(rest, 0);
        let inner = &group[..close.saturating_sub(1)];
        return split_top_level(inner)
            .into_iter()
            .flat_map(|item| {
                let item = item.trim();
                let head: Vec<String> = segments(item);
                if head.is_empty() {
                    Vec::new()
                } else {
                    vec![head]
                }
            })
            .collect();
    }
    vec![segments(rest)]
}

fn split_top_level(text: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items
}

/// The leading `a::b::c` identifiers of `text`.
fn segments(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    loop {
        let word: String = rest.chars().take_while(|&c| is_ident(c)).collect();
        if word.is_empty() || word == "self" {
            break;
        }
        rest = rest[word.len()..].trim_start();
        out.push(word);
        match rest.strip_prefix("::") {
            Some(r) => rest = r.trim_start(),
            None => break,
        }
    }
    out
}

/// Every cycle's modules (each strongly connected component of more than one module).
fn cycles(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    let nodes: Vec<&Vec<String>> = edges.keys().collect();
    let reach = |from: &Vec<String>| -> BTreeSet<Vec<String>> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(n) = stack.pop() {
            for m in edges.get(&n).into_iter().flatten() {
                if seen.insert(m.clone()) {
                    stack.push(m.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&Vec<String>, BTreeSet<Vec<String>>> =
        nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for n in &nodes {
        if done.contains(*n) || !reachable[n].contains(*n) {
            continue;
        }
        let component: Vec<Vec<String>> = nodes
            .iter()
            .filter(|m| reachable[n].contains(**m) && reachable[*m].contains(*n))
            .map(|m| (*m).clone())
            .collect();
        done.extend(component.iter().cloned());
        out.push(component);
    }
    out
}

/// Every crate root of a package: its library, its binaries, its integration tests.
fn crate_roots(package: &str) -> Vec<(String, PathBuf)> {
    let dir = workspace().join(package);
    let mut roots = Vec::new();
    for (kind, file) in [("lib", "src/lib.rs"), ("bin", "src/main.rs")] {
        let path = dir.join(file);
        if path.is_file() {
            roots.push((format!("{package} {kind}"), path));
        }
    }
    for sub in ["tests", "src/bin"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        // A target is a file of its own or, as cargo finds them, a folder with a main.rs.
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| {
                if p.extension().is_some_and(|e| e == "rs") {
                    Some(p)
                } else {
                    Some(p.join("main.rs")).filter(|main| main.is_file())
                }
            })
            .collect();
        files.sort();
        for path in files {
            let target = if path.ends_with("main.rs") {
                path.parent()
            } else {
                Some(path.as_path())
            };
            let stem = target
                .and_then(Path::file_stem)
                .map(|s| s.to_string_lossy().into_owned());
            roots.push((
                format!("{package} {sub}/{}", stem.unwrap_or_default()),
                path,
            ));
        }
    }
    roots
}

/// The cycles of every crate, each as `a -> b -> a`-style module lists.
fn workspace_cycles() -> Vec<String> {
    let mut found = Vec::new();
    for package in PACKAGES {
        for (name, root) in crate_roots(package) {
            let krate = Crate::load(name, &root);
            for cycle in cycles(&krate.edges()) {
                let names: Vec<String> = cycle.iter().map(|m| krate.display(m)).collect();
                found.push(names.join(" <-> "));
            }
        }
    }
    found
}

#[test]
fn no_two_modules_import_each_other_in_any_crate() {
    let cycles = workspace_cycles();
    assert!(
        cycles.is_empty(),
        "modules that import each other (directly or through others):\n  {}",
        cycles.join("\n  ")
    );
}

#[test]
fn the_graph_sees_a_cycle_written_in_any_form() {
    let src = "mod a { use crate::b::X; pub struct Y; }\n\
               mod b { pub struct X; fn f() { super::a::Y; } }\n\
               mod c { use super::{d::Z}; }\n\
               mod d { pub struct Z; /* crate::c */ const S: &str = \"crate::c\"; }\n";
    let dir = std::env::temp_dir().join(format!("module-graph-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    let root = dir.join("lib.rs");
    std::fs::write(&root, src).expect("writing a scratch crate");
    let krate = Crate::load("scratch".into(), &root);
    let found = cycles(&krate.edges());
    std::fs::remove_dir_all(&dir).expect("removing the scratch directory");
    let names: Vec<Vec<String>> = found
        .iter()
        .map(|c| c.iter().map(|m| krate.display(m)).collect())
        .collect();
    assert_eq!(
        names,
        [["scratch::a", "scratch::b"]],
        "a ⇄ b is a cycle; c → d is not, and neither a comment nor a string is a reference"
    );
}
