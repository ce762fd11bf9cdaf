//! Reading the services' `/metrics` (Prometheus text format) in assertions.
//!
//! Only what tests need: sample lines with their labels and value. Comment lines (`# HELP`,
//! `# TYPE`) and timestamps are skipped.

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample of `text`; lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

/// The sum of the samples named `name` whose labels include every pair of `labels`
/// (a series not exported yet counts as 0, as a counter that never moved would).
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ', '\t'])?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(body)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the pairs and what follows the `}`.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_owned();
        s = s[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.push((key, value));
        s = &s[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP saga_messages_handled_total messages handled
# TYPE saga_messages_handled_total counter
saga_messages_handled_total{type="StockAdjusted",outcome="ok"} 3
saga_messages_handled_total{type="StockAdjusted",outcome="duplicate"} 1
saga_messages_handled_total{type="OrderCreated",outcome="ok"} 2 1700000000000
saga_relay_published_total 7
weird{msg="say \"hi\", then\\leave",x="a}b"} 1.5e0
saga_duration_seconds_bucket{le="+Inf"} +Inf
"#;

    #[test]
    fn reads_names_labels_and_values() {
        let samples = parse(TEXT);
        assert_eq!(samples.len(), 6);
        assert_eq!(samples[3].name, "saga_relay_published_total");
        assert_eq!(samples[3].value, 7.0);
        assert_eq!(samples[4].label("msg"), Some(r#"say "hi", then\leave"#));
        assert_eq!(samples[4].label("x"), Some("a}b"));
        assert_eq!(samples[4].value, 1.5);
        assert_eq!(samples[5].value, f64::INFINITY);
    }

    #[test]
    fn sums_the_series_matching_the_given_labels() {
        let samples = parse(TEXT);
        let total = |labels: &[(&str, &str)]| sum(&samples, "saga_messages_handled_total", labels);
        assert_eq!(total(&[]), 6.0);
        assert_eq!(total(&[("outcome", "ok")]), 5.0);
        assert_eq!(
            total(&[("type", "StockAdjusted"), ("outcome", "duplicate")]),
            1.0
        );
        assert_eq!(total(&[("outcome", "dead_lettered")]), 0.0);
        assert_eq!(sum(&samples, "no_such_metric", &[]), 0.0);
    }
}
