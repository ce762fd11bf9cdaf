//! Event schemas against the previous release's: for every (event type, version) that
//! release published, the schema this code derives must accept what its writers send and
//! send only what its readers accept. Both schemas are walked side by side, `$ref`s
//! resolved within each document; every difference an old reader or writer cannot take is
//! one line naming the event, the version and the field path
//! (`OrderCreated v1: payload.items[].unit_price: type changed from integer to string`).
//!
//! Breaks: a property removed; `type`, `format`, `const` or `default` changed; a property
//! required now that was not (old writers omit it) or no longer required (old readers need
//! it); an `enum` value added (old readers refuse it) or removed (old writers send it); any
//! validation keyword changed (`minimum`, `maxLength`, `pattern`, `not`, ...), narrowed
//! (old writers may send what this code refuses) or widened (this code may send what old
//! readers that validate refuse). Allowed: a new optional property; annotations
//! (`description`, `title`, `examples`, ...). A type the previous release published that
//! this code no longer reads is a break, and so is a version, unless that release already
//! had a newer version of the type (it writes the newer one: dropping the older is the
//! contract step). Versions that did not exist before are not compared.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// Schemas by (event type name, version).
pub type Catalog = BTreeMap<(String, u32), Value>;

/// Keywords that describe and never constrain: changing them breaks nobody.
const ANNOTATIONS: &[&str] = &[
    "$comment",
    "$defs",
    "$id",
    "$schema",
    "definitions",
    "deprecated",
    "description",
    "example",
    "examples",
    "readOnly",
    "title",
    "writeOnly",
];

/// Keywords compared structurally by the walk rather than by value.
const WALKED: &[&str] = &[
    "$ref",
    "additionalProperties",
    "allOf",
    "anyOf",
    "const",
    "default",
    "enum",
    "format",
    "items",
    "oneOf",
    "prefixItems",
    "properties",
    "required",
    "type",
];

/// Lower bounds: raising one (or adding it) narrows what is accepted.
const LOWER_BOUNDS: &[&str] = &[
    "exclusiveMinimum",
    "minContains",
    "minItems",
    "minLength",
    "minProperties",
    "minimum",
];

/// Upper bounds: lowering one (or adding it) narrows what is accepted.
const UPPER_BOUNDS: &[&str] = &[
    "exclusiveMaximum",
    "maxContains",
    "maxItems",
    "maxLength",
    "maxProperties",
    "maximum",
];

/// The (type, version) a message-body schema is for: its `properties.type.const` and
/// `properties.version.const`.
pub fn schema_key(schema: &Value) -> Option<(String, u32)> {
    let name = schema.pointer("/properties/type/const")?.as_str()?;
    let version = schema.pointer("/properties/version/const")?.as_u64()?;
    Some((name.to_owned(), u32::try_from(version).ok()?))
}

/// Keys the published schema files (path → content) by [`schema_key`]; a file that does not
/// parse, has no key, or repeats another's key with a different schema is an error.
pub fn catalog_of_files(files: &BTreeMap<String, String>) -> Result<Catalog, Vec<String>> {
    let mut catalog = Catalog::new();
    let mut errors = Vec::new();
    for (path, text) in files {
        let schema: Value = match serde_json::from_str(text) {
            Ok(schema) => schema,
            Err(e) => {
                errors.push(format!("{path}: not JSON: {e}"));
                continue;
            }
        };
        let Some(key) = schema_key(&schema) else {
            errors.push(format!(
                "{path}: no properties.type.const and properties.version.const"
            ));
            continue;
        };
        if catalog.get(&key).is_some_and(|known| *known != schema) {
            errors.push(format!(
                "{path}: a second, different schema of {} v{}",
                key.0, key.1
            ));
        }
        catalog.insert(key, schema);
    }
    if errors.is_empty() {
        Ok(catalog)
    } else {
        Err(errors)
    }
}

/// Every break of `new` against `old`: for each (type, version) of `old`, the type must
/// still exist in `new`, with that version and a compatible schema. A version may be gone
/// only as the contract step of a newer one: when `old` has a newer version of the type,
/// the previous release writes that one, and the older is not compared.
pub fn compare_catalogs(old: &Catalog, new: &Catalog) -> Vec<String> {
    let types: BTreeSet<&str> = new.keys().map(|(name, _)| name.as_str()).collect();
    let mut newest_old = BTreeMap::<&str, u32>::new();
    for (name, version) in old.keys() {
        let newest = newest_old.entry(name).or_default();
        *newest = (*newest).max(*version);
    }
    let mut problems = Vec::new();
    let mut removed = BTreeMap::<&str, Vec<u32>>::new();
    for ((name, version), old_schema) in old {
        if !types.contains(name.as_str()) {
            removed.entry(name).or_default().push(*version);
            continue;
        }
        match new.get(&(name.clone(), *version)) {
            Some(new_schema) => {
                problems.extend(compare_schema(name, *version, old_schema, new_schema));
            }
            None if newest_old[name.as_str()] > *version => {}
            None => problems.push(format!(
                "{name} v{version}: version no longer read, and it is the one the previous \
                 release writes; drop a version only in a release after one that writes a \
                 newer one"
            )),
        }
    }
    for (name, versions) in removed {
        let versions: Vec<String> = versions.iter().map(|v| format!("v{v}")).collect();
        problems.push(format!(
            "{name}: event type removed (the previous release writes and reads {})",
            versions.join(", ")
        ));
    }
    problems
}

/// Every break of `new` against `old`, both the schema of `event` version `version`.
pub fn compare_schema(event: &str, version: u32, old: &Value, new: &Value) -> Vec<String> {
    let mut walk = Walk {
        old_doc: old,
        new_doc: new,
        refs: Vec::new(),
        problems: Vec::new(),
    };
    walk.node(old, new, "");
    walk.problems
        .into_iter()
        .map(|(path, what)| {
            let path = if path.is_empty() { "(body)" } else { &path };
            format!("{event} v{version}: {path}: {what}")
        })
        .collect()
}

struct Walk<'a> {
    old_doc: &'a Value,
    new_doc: &'a Value,
    /// The (old, new) `$ref` pairs being walked, to stop on a recursive type.
    refs: Vec<(String, String)>,
    problems: Vec<(String, String)>,
}

/// A schema node with its `$ref`s followed (the sibling keywords of a `$ref` override the
/// target's), and the first `$ref` it came through.
struct Resolved {
    keywords: Map<String, Value>,
    via: Option<String>,
}

fn resolve(doc: &Value, node: &Value) -> Result<Resolved, String> {
    let mut keywords = match node {
        Value::Object(map) => map.clone(),
        Value::Bool(true) => Map::new(),
        other => return Err(format!("unsupported schema {other}")),
    };
    let mut via = None;
    for _ in 0..32 {
        let Some(reference) = keywords.remove("$ref") else {
            return Ok(Resolved { keywords, via });
        };
        let reference = reference.as_str().unwrap_or_default().to_owned();
        let target = reference
            .strip_prefix('#')
            .and_then(|pointer| doc.pointer(pointer))
            .and_then(Value::as_object)
            .ok_or_else(|| format!("cannot resolve $ref {reference}"))?;
        let mut merged = target.clone();
        merged.extend(keywords);
        keywords = merged;
        via.get_or_insert(reference);
    }
    Err("$ref chain longer than 32".to_owned())
}

fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// `type` as a set of names (a single name or an array of them).
fn types(keywords: &Map<String, Value>) -> BTreeSet<String> {
    match keywords.get("type") {
        Some(Value::String(t)) => BTreeSet::from([t.clone()]),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => BTreeSet::new(),
    }
}

fn show_types(types: &BTreeSet<String>) -> String {
    if types.is_empty() {
        "any".to_owned()
    } else {
        types.iter().cloned().collect::<Vec<_>>().join(" or ")
    }
}

fn show(value: Option<&Value>) -> String {
    match value {
        None => "none".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn required(keywords: &Map<String, Value>) -> BTreeSet<&str> {
    keywords
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Why a change of validation keyword `keyword` from `old` to `new` breaks.
fn bound_change(keyword: &str, old: Option<&Value>, new: Option<&Value>) -> String {
    let narrowed = match (old.and_then(Value::as_f64), new.and_then(Value::as_f64)) {
        (Some(o), Some(n)) if LOWER_BOUNDS.contains(&keyword) => Some(n > o),
        (Some(o), Some(n)) if UPPER_BOUNDS.contains(&keyword) => Some(n < o),
        (None, Some(_)) if old.is_none() => Some(true),
        (Some(_), None) if new.is_none() => Some(false),
        _ => None,
    };
    let why = match narrowed {
        Some(true) => "narrowed: old writers may send what this release refuses",
        Some(false) => "widened: this release may send what old readers refuse",
        None => "old writers or readers may refuse the other's values",
    };
    match (old, new) {
        (None, new) => format!("{keyword} added ({}; {why})", show(new)),
        (old, None) => format!("{keyword} removed (was {}; {why})", show(old)),
        (old, new) => format!(
            "{keyword} changed from {} to {} ({why})",
            show(old),
            show(new)
        ),
    }
}

impl Walk<'_> {
    fn report(&mut self, path: &str, what: String) {
        self.problems.push((path.to_owned(), what));
    }

    fn node(&mut self, old: &Value, new: &Value, path: &str) {
        let (old, new) = match (resolve(self.old_doc, old), resolve(self.new_doc, new)) {
            (Ok(old), Ok(new)) => (old, new),
            (Err(e), _) => return self.report(path, format!("previous release: {e}")),
            (_, Err(e)) => return self.report(path, e),
        };
        let pair = match (&old.via, &new.via) {
            (Some(o), Some(n)) => Some((o.clone(), n.clone())),
            _ => None,
        };
        if let Some(pair) = &pair {
            if self.refs.contains(pair) {
                return;
            }
            self.refs.push(pair.clone());
        }
        self.keywords(&old.keywords, &new.keywords, path);
        if pair.is_some() {
            self.refs.pop();
        }
    }

    fn keywords(&mut self, old: &Map<String, Value>, new: &Map<String, Value>, path: &str) {
        let (old_types, new_types) = (types(old), types(new));
        if old_types != new_types {
            // Nothing below a changed type is comparable.
            let what = format!(
                "type changed from {} to {}",
                show_types(&old_types),
                show_types(&new_types)
            );
            return self.report(path, what);
        }
        for keyword in ["format", "const"] {
            if old.get(keyword) != new.get(keyword) {
                let what = format!(
                    "{keyword} changed from {} to {}",
                    show(old.get(keyword)),
                    show(new.get(keyword))
                );
                self.report(path, what);
            }
        }
        if let (Some(o), Some(n)) = (old.get("default"), new.get("default"))
            && o != n
        {
            let what = format!("default changed from {o} to {n} (a value an old writer omits)");
            self.report(path, what);
        }
        self.enumeration(old.get("enum"), new.get("enum"), path);
        let validation: BTreeSet<&String> = old
            .keys()
            .chain(new.keys())
            .filter(|k| !ANNOTATIONS.contains(&k.as_str()) && !WALKED.contains(&k.as_str()))
            .collect();
        for keyword in validation {
            let (o, n) = (old.get(keyword), new.get(keyword));
            if o != n {
                self.report(path, bound_change(keyword, o, n));
            }
        }
        self.properties(old, new, path);
        for (keyword, suffix) in [("items", "[]"), ("additionalProperties", "{}")] {
            match (old.get(keyword), new.get(keyword)) {
                (Some(o @ Value::Object(_)), Some(n @ Value::Object(_))) => {
                    self.node(o, n, &format!("{path}{suffix}"));
                }
                (o, n) if o != n => self.report(path, bound_change(keyword, o, n)),
                _ => {}
            }
        }
        for keyword in ["prefixItems", "anyOf", "oneOf", "allOf"] {
            self.alternatives(keyword, old.get(keyword), new.get(keyword), path);
        }
    }

    fn enumeration(&mut self, old: Option<&Value>, new: Option<&Value>, path: &str) {
        let values = |v: Option<&Value>| -> Option<Vec<Value>> { v?.as_array().cloned() };
        let (old, new) = match (values(old), values(new)) {
            (None, None) => return,
            (Some(o), Some(n)) => (o, n),
            (o, n) => {
                let what = format!(
                    "enum changed from {} to {}",
                    show(o.map(Value::Array).as_ref()),
                    show(n.map(Value::Array).as_ref())
                );
                return self.report(path, what);
            }
        };
        for value in new.iter().filter(|v| !old.contains(v)) {
            let what = format!(
                "enum value {} added (old readers refuse it)",
                show(Some(value))
            );
            self.report(path, what);
        }
        for value in old.iter().filter(|v| !new.contains(v)) {
            let what = format!(
                "enum value {} removed (old writers still send it)",
                show(Some(value))
            );
            self.report(path, what);
        }
    }

    fn properties(&mut self, old: &Map<String, Value>, new: &Map<String, Value>, path: &str) {
        let empty = Map::new();
        let props =
            |m: &Map<String, Value>| m.get("properties").and_then(Value::as_object).cloned();
        let (old_props, new_props) = (props(old), props(new));
        let (old_props, new_props) = (
            old_props.as_ref().unwrap_or(&empty),
            new_props.as_ref().unwrap_or(&empty),
        );
        let (old_required, new_required) = (required(old), required(new));
        for (name, old_schema) in old_props {
            let field = child(path, name);
            match new_props.get(name) {
                None => self.report(&field, "field removed".to_owned()),
                Some(new_schema) => self.node(old_schema, new_schema, &field),
            }
        }
        for name in new_required.difference(&old_required) {
            let what = if old_props.contains_key(*name) {
                "now required (old writers may omit it)"
            } else {
                "required field added (old writers do not send it)"
            };
            self.report(&child(path, name), what.to_owned());
        }
        for name in old_required.difference(&new_required) {
            if new_props.contains_key(*name) {
                let what = "no longer required (old readers need it)".to_owned();
                self.report(&child(path, name), what);
            }
        }
    }

    fn alternatives(
        &mut self,
        keyword: &str,
        old: Option<&Value>,
        new: Option<&Value>,
        path: &str,
    ) {
        let (old_list, new_list) = match (old, new) {
            (Some(Value::Array(o)), Some(Value::Array(n))) if o.len() == n.len() => (o, n),
            (o, n) if o != n => return self.report(path, bound_change(keyword, o, n)),
            _ => return,
        };
        for (i, (o, n)) in old_list.iter().zip(new_list).enumerate() {
            self.node(o, n, &format!("{path}<{keyword}[{i}]>"));
        }
    }
}

#[cfg(test)]
#[path = "schemas_tests.rs"]
mod tests;
