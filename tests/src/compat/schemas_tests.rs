use serde_json::{Value, json};

use super::*;

/// A message body shaped as `events::contract` renders one: an envelope whose payload is a
/// `$ref` into `$defs`, with an item type and an enum beside it.
fn schema(name: &str, version: u32) -> Value {
    json!({
        "$defs": {
            "Order": {
                "description": "An order.",
                "properties": {
                    "order_id": {"format": "uuid", "type": "string"},
                    "items": {
                        "items": {"$ref": "#/$defs/Item"},
                        "maxItems": 100,
                        "minItems": 1,
                        "type": "array"
                    },
                    "reason": {"$ref": "#/$defs/Reason", "description": "Why."},
                    "note": {"type": ["string", "null"]}
                },
                "required": ["order_id", "items", "reason"],
                "type": "object"
            },
            "Item": {
                "properties": {
                    "sku": {"pattern": "^[A-Z]+$", "type": "string"},
                    "unit_price": {"format": "int64", "minimum": 0, "type": "integer"}
                },
                "required": ["sku", "unit_price"],
                "type": "object"
            },
            "Reason": {"enum": ["timeout", "refused"], "type": "string"}
        },
        "properties": {
            "type": {"const": name, "type": "string"},
            "version": {"const": version, "type": "integer"},
            "payload": {"$ref": "#/$defs/Order"}
        },
        "required": ["type", "version", "payload"],
        "title": name,
        "type": "object"
    })
}

/// The breaks of `schema("Order", 1)` changed by `change`.
fn breaks(change: impl FnOnce(&mut Value)) -> Vec<String> {
    let old = schema("Order", 1);
    let mut new = old.clone();
    change(&mut new);
    compare_schema("Order", 1, &old, &new)
}

fn at<'a>(schema: &'a mut Value, pointer: &str) -> &'a mut Value {
    schema
        .pointer_mut(pointer)
        .unwrap_or_else(|| panic!("{pointer} is in the fixture"))
}

fn props<'a>(schema: &'a mut Value, def: &str) -> &'a mut Map<String, Value> {
    at(schema, &format!("/$defs/{def}/properties"))
        .as_object_mut()
        .unwrap()
}

#[test]
fn the_same_schema_has_no_break() {
    assert_eq!(breaks(|_| {}), Vec::<String>::new());
}

#[test]
fn annotations_and_a_new_optional_field_are_allowed() {
    let found = breaks(|s| {
        *at(s, "/$defs/Order/description") = json!("An order, described anew.");
        *at(s, "/title") = json!("Order version 1");
        at(s, "/$defs/Item/properties/sku")["examples"] = json!(["ABC"]);
        props(s, "Order").insert(
            "currency".into(),
            json!({"type": ["string", "null"], "pattern": "^[A-Z]{3}$"}),
        );
    });
    assert_eq!(found, Vec::<String>::new());
}

#[test]
fn a_payload_type_renamed_in_the_code_is_the_same_schema() {
    // A version kept readable beside a newer one gets a struct of its own, so its `$defs`
    // name changes; only what the reference resolves to counts.
    let found = breaks(|s| {
        let defs = at(s, "/$defs").as_object_mut().unwrap();
        let order = defs.remove("Order").unwrap();
        defs.insert("OrderV1".into(), order);
        *at(s, "/properties/payload/$ref") = json!("#/$defs/OrderV1");
    });
    assert_eq!(found, Vec::<String>::new());
}

#[test]
fn a_type_change_is_named_by_event_version_and_field() {
    let found = breaks(|s| *at(s, "/$defs/Item/properties/unit_price") = json!({"type": "string"}));
    assert_eq!(
        found,
        ["Order v1: payload.items[].unit_price: type changed from integer to string"]
    );
}

#[test]
fn a_nullable_field_is_a_type_change() {
    let found =
        breaks(|s| *at(s, "/$defs/Order/properties/order_id/type") = json!(["string", "null"]));
    assert_eq!(
        found,
        ["Order v1: payload.order_id: type changed from string to null or string"]
    );
}

#[test]
fn a_removed_field_is_a_break_and_not_also_a_required_one() {
    let found = breaks(|s| {
        props(s, "Item").remove("unit_price");
    });
    assert_eq!(
        found,
        ["Order v1: payload.items[].unit_price: field removed"]
    );
    let renamed = breaks(|s| {
        let sku = props(s, "Item").remove("sku").unwrap();
        props(s, "Item").insert("code".into(), sku);
        *at(s, "/$defs/Item/required/0") = json!("code");
    });
    assert_eq!(
        renamed,
        [
            "Order v1: payload.items[].sku: field removed",
            "Order v1: payload.items[].code: required field added (old writers do not send it)",
        ]
    );
}

#[test]
fn format_and_const_changes_are_breaks() {
    let found = breaks(|s| {
        *at(s, "/$defs/Order/properties/order_id/format") = json!("uri");
        *at(s, "/properties/type/const") = json!("Ordered");
    });
    assert_eq!(
        found,
        [
            "Order v1: payload.order_id: format changed from uuid to uri",
            "Order v1: type: const changed from Order to Ordered",
        ]
    );
}

#[test]
fn required_gained_or_lost_is_a_break_either_way() {
    let found = breaks(|s| {
        *at(s, "/$defs/Order/required") = json!(["order_id", "reason", "note"]);
    });
    assert_eq!(
        found,
        [
            "Order v1: payload.note: now required (old writers may omit it)",
            "Order v1: payload.items: no longer required (old readers need it)",
        ]
    );
}

#[test]
fn an_enum_value_added_or_removed_is_a_break() {
    let found = breaks(|s| *at(s, "/$defs/Reason/enum") = json!(["timeout", "expired"]));
    assert_eq!(
        found,
        [
            "Order v1: payload.reason: enum value expired added (old readers refuse it)",
            "Order v1: payload.reason: enum value refused removed (old writers still send it)",
        ]
    );
}

#[test]
fn validation_keywords_changed_either_way_are_breaks_that_say_which() {
    let found = breaks(|s| {
        *at(s, "/$defs/Order/properties/items/maxItems") = json!(50);
        *at(s, "/$defs/Order/properties/items/minItems") = json!(0);
        *at(s, "/$defs/Item/properties/sku/pattern") = json!("^[A-Z0-9]+$");
        at(s, "/$defs/Item/properties/unit_price")["maximum"] = json!(1000);
    });
    assert_eq!(
        found,
        [
            "Order v1: payload.items: maxItems changed from 100 to 50 (narrowed: old writers \
             may send what this release refuses)",
            "Order v1: payload.items: minItems changed from 1 to 0 (widened: this release may \
             send what old readers refuse)",
            "Order v1: payload.items[].sku: pattern changed from ^[A-Z]+$ to ^[A-Z0-9]+$ (old \
             writers or readers may refuse the other's values)",
            "Order v1: payload.items[].unit_price: maximum added (1000; narrowed: old writers \
             may send what this release refuses)",
        ]
    );
}

#[test]
fn a_recursive_type_is_walked_once() {
    let recursive = |extra: &str| {
        json!({
            "$defs": {"Node": {
                "properties": {
                    "children": {"items": {"$ref": "#/$defs/Node"}, "type": "array"},
                    "label": {"type": "string", "maxLength": 10},
                    extra: {"type": "string"}
                },
                "type": "object"
            }},
            "properties": {"payload": {"$ref": "#/$defs/Node"}},
            "type": "object"
        })
    };
    let (old, mut new) = (recursive("a"), recursive("b"));
    *new.pointer_mut("/$defs/Node/properties/label/maxLength")
        .unwrap() = json!(20);
    assert_eq!(
        compare_schema("Tree", 3, &old, &new),
        [
            "Tree v3: payload.a: field removed",
            "Tree v3: payload.label: maxLength changed from 10 to 20 (widened: this release \
             may send what old readers refuse)",
        ]
    );
}

fn catalog(schemas: &[Value]) -> Catalog {
    schemas
        .iter()
        .map(|s| (schema_key(s).unwrap(), s.clone()))
        .collect()
}

/// A version 2 of `Order` that version 1 could not take: `items` is gone.
fn order_v2() -> Value {
    let mut v2 = schema("Order", 2);
    props(&mut v2, "Order").remove("items");
    v2
}

#[test]
fn a_new_version_is_not_compared_and_old_ones_must_stay() {
    let old = catalog(&[schema("Order", 1), schema("Refund", 1)]);
    let v2 = order_v2();
    let with_v2 = catalog(&[schema("Order", 1), v2.clone(), schema("Refund", 1)]);
    assert_eq!(compare_catalogs(&old, &with_v2), Vec::<String>::new());

    let dropped = catalog(&[v2]);
    assert_eq!(
        compare_catalogs(&old, &dropped),
        [
            "Order v1: version no longer read, and it is the one the previous release writes; \
             drop a version only in a release after one that writes a newer one",
            "Refund: event type removed (the previous release writes and reads v1)",
        ]
    );
}

#[test]
fn an_older_version_may_go_once_the_previous_release_has_a_newer_one() {
    let v2 = order_v2();
    let old = catalog(&[schema("Order", 1), v2.clone()]);
    assert_eq!(
        compare_catalogs(&old, &catalog(std::slice::from_ref(&v2))),
        Vec::<String>::new()
    );

    // The newer one itself stays frozen.
    let mut changed = v2;
    props(&mut changed, "Order").remove("note");
    assert_eq!(
        compare_catalogs(&old, &catalog(&[changed])),
        ["Order v2: payload.note: field removed"]
    );
}

#[test]
fn published_files_are_keyed_by_their_content_not_their_name() {
    let files = BTreeMap::from([
        (
            "schemas/Order.json".to_owned(),
            schema("Order", 2).to_string(),
        ),
        (
            "schemas/Order.v1.json".to_owned(),
            schema("Order", 1).to_string(),
        ),
    ]);
    let keys: Vec<_> = catalog_of_files(&files).unwrap().into_keys().collect();
    assert_eq!(keys, [("Order".to_owned(), 1), ("Order".to_owned(), 2)]);

    let mut other = schema("Order", 1);
    props(&mut other, "Order").remove("note");
    let clash = BTreeMap::from([
        ("a.json".to_owned(), schema("Order", 1).to_string()),
        ("b.json".to_owned(), other.to_string()),
        ("c.json".to_owned(), "{}".to_owned()),
    ]);
    let errors = catalog_of_files(&clash).unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].starts_with("b.json: a second, different schema of Order v1"));
    assert!(errors[1].starts_with("c.json: no properties.type.const"));
}
