//! The metric names a PromQL expression selects, so that the dashboards and rules under
//! `deploy/` can be checked against what flowtap exports.

use std::collections::BTreeSet;

/// Words that are followed by a parenthesised list of label names, not an expression.
const GROUPING: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Words that are neither metric names nor followed by `(`: aggregations written as
/// `sum by (le) (...)`, binary operators, modifiers and literals.
const KEYWORDS: [&str; 23] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "bool",
    "atan2",
    "offset",
    "inf",
    "nan",
    "start",
];

/// The metric names selected by `expr`: identifiers that are not function calls, keywords,
/// label names (in matchers and grouping lists), strings, numbers, durations or Grafana
/// variables.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut grouping = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_until(&chars, i, '}');
        } else if c == '[' {
            i = skip_until(&chars, i, ']');
        } else if c == '(' && grouping {
            i = skip_until(&chars, i, ')');
            grouping = false;
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            // A Grafana variable, a number or a duration: one word, none of it a name.
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_.{}".contains(chars[i]))
            {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if GROUPING.contains(&word.as_str()) {
                grouping = next == Some(&'(');
            } else if next != Some(&'(') && !KEYWORDS.contains(&word.to_lowercase().as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The index after the string starting at `start`, escapes included.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// The index after the `close` that ends the bracket at `start`, skipping strings inside.
fn skip_until(chars: &[char], start: usize, close: char) -> usize {
    let mut i = start + 1;
    while i < chars.len() && chars[i] != close {
        if chars[i] == '"' || chars[i] == '\'' || chars[i] == '`' {
            i = skip_string(chars, i);
        } else {
            i += 1;
        }
    }
    i + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).into_iter().collect()
    }

    #[test]
    fn functions_aggregations_and_grouping_labels_are_not_names() {
        assert_eq!(
            names(
                r#"histogram_quantile(0.95, sum by (primitive, le) (rate(primitive_execution_duration_seconds_bucket{primitive=~"$p", x="a}b"}[$__rate_interval])))"#
            ),
            ["primitive_execution_duration_seconds_bucket"]
        );
    }

    #[test]
    fn both_sides_of_binary_operators_are_names() {
        assert_eq!(
            names(
                "sum without (instance) (rate(a_total[5m] offset 1h)) / on (job) group_left b:ratio:rate5m > bool 0.5 and up == 1e3"
            ),
            ["a_total", "b:ratio:rate5m", "up"]
        );
    }

    #[test]
    fn strings_and_variables_hide_what_they_contain() {
        assert_eq!(
            names(
                r#"label_replace(cache_hits_total, "dst", "fake_metric", 'src', "(.*)") * ${factor}"#
            ),
            ["cache_hits_total"]
        );
    }
}
