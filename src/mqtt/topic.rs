//! MQTT topic filters: validation and matching, with the `+` and `#` wildcards.

/// Longest topic filter accepted in a subscription, in bytes.
pub const MAX_FILTER_BYTES: usize = 512;

/// Whether `filter` is a valid subscription: `+` fills a whole level, `#` only the last one.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > MAX_FILTER_BYTES || filter.contains('\0') {
        return false;
    }
    let levels = filter.split('/').count();
    filter.split('/').enumerate().all(|(i, level)| {
        let hash_ok = !level.contains('#') || (level == "#" && i + 1 == levels);
        let plus_ok = !level.contains('+') || level == "+";
        hash_ok && plus_ok
    })
}

/// Whether `topic` (no wildcards) matches the valid `filter`. As MQTT requires, a wildcard in
/// the first level does not match topics starting with `$`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut levels = topic.split('/');
    for pattern in filter.split('/') {
        if pattern == "#" {
            // `a/#` matches `a` too.
            return true;
        }
        match levels.next() {
            Some(level) if pattern == "+" || pattern == level => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_validated() {
        for good in ["#", "+", "a/b", "hydromesh/meters/+/command", "a/#", "+/+/+/+", "/", "a//b"] {
            assert!(valid_filter(good), "{good}");
        }
        for bad in ["", "a#", "a/#/b", "a+/b", "a/b+", "#/a", "a\0b"] {
            assert!(!valid_filter(bad), "{bad:?}");
        }
        assert!(!valid_filter(&"a".repeat(MAX_FILTER_BYTES + 1)));
    }

    #[test]
    fn wildcards_match_levels() {
        let topic = "hydromesh/meters/7/command";
        for filter in
            ["#", "hydromesh/#", "hydromesh/meters/+/command", "+/+/+/+", topic, "hydromesh/meters/7/#"]
        {
            assert!(matches(filter, topic), "{filter}");
        }
        for filter in
            ["hydromesh/meters/+", "hydromesh/meters/+/reading", "+/+/+", "+/+/+/+/+", "hydromesh/+"]
        {
            assert!(!matches(filter, topic), "{filter}");
        }
        assert!(matches("a/#", "a"));
        assert!(!matches("#", "$SYS/x") && !matches("+/x", "$SYS/x") && matches("$SYS/#", "$SYS/x"));
    }
}
