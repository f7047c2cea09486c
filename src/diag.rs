//! Diagnostics shared by every part of the configuration: problems located by file, line and
//! field, collected so one run reports them all, and the duration and size notations the file
//! uses. A leaf: it knows nothing of what is being configured.

use std::fmt;
use std::time::Duration;

use serde_saphyr::Spanned;

/// One thing wrong with a configuration, located as precisely as the source allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// File name, `--flag` or `$ENV` the value came from.
    pub source: String,
    /// 1-based line in the file, when known.
    pub line: Option<u64>,
    /// Dotted field path, such as `upstream.url`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}: {}", self.source, l, self.field, self.message),
            None => write!(f, "{}: {}: {}", self.source, self.field, self.message),
        }
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<Problem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} configuration problem(s):", self.0.len())?;
        for p in &self.0 {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

/// Collects problems for one source while validating, and warnings: settings that are valid
/// but leave a door open (they do not stop the configuration from loading).
pub struct Problems<'a> {
    source: &'a str,
    list: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl<'a> Problems<'a> {
    pub fn new(source: &'a str) -> Self {
        Problems {
            source,
            list: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Records a warning, located like a problem.
    pub fn warn(
        &mut self,
        line: Option<u64>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.warnings.push(Problem {
            source: self.source.to_string(),
            line,
            field: field.into(),
            message: message.into(),
        });
    }

    pub fn add(&mut self, line: Option<u64>, field: impl Into<String>, message: impl Into<String>) {
        self.list.push(Problem {
            source: self.source.to_string(),
            line,
            field: field.into(),
            message: message.into(),
        });
    }

    pub fn at<T>(&mut self, v: &Spanned<T>, field: impl Into<String>, message: impl Into<String>) {
        self.add(Some(v.referenced.line()), field, message);
    }

    pub fn into_result<T>(self, v: T) -> Result<T, ConfigErrors> {
        if self.list.is_empty() {
            Ok(v)
        } else {
            Err(ConfigErrors(self.list))
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Records a problem located elsewhere than this source (an override from `--flag` or
    /// `$ENV`).
    pub fn push(&mut self, problem: Problem) {
        self.list.push(problem);
    }

    /// Records a warning located elsewhere than this source.
    pub fn push_warning(&mut self, warning: Problem) {
        self.warnings.push(warning);
    }

    /// The problems and the warnings found.
    pub fn into_parts(self) -> (Vec<Problem>, Vec<Problem>) {
        (self.list, self.warnings)
    }
}

/// Parses `1h`, `30m`, `15s`, `250ms`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (use e.g. 500ms, 30s, 15m, 2h, 7d)"))?;
    let mult_ms: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {s:?} (use ms, s, m, h or d)"
            ))
        }
    };
    n.checked_mul(mult_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {s:?} is too large"))
}

/// Parses `512mb`, `64kb`, `1gb` or a bare number of bytes.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (use e.g. 64kb, 512mb, 1gb)"))?;
    let mult: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" => 1024,
        "m" | "mb" => 1024 * 1024,
        "g" | "gb" => 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {s:?} (use b, kb, mb or gb)"
            ))
        }
    };
    n.checked_mul(mult)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("1 fortnight").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_size("512mb").unwrap(), 512 * 1024 * 1024);
        assert_eq!(parse_size("64KB").unwrap(), 64 * 1024);
        assert!(parse_size("lots").is_err());
    }
}
