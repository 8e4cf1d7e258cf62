//! Configuration errors: each one names the file, the line (and column), the
//! key path and what is wrong; `ConfigErrors` carries every error found in
//! one load so an operator fixes them all in one pass.

use std::fmt;

/// What kind of problem a [`ConfigError`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigErrorKind {
    /// The file could not be read.
    Io,
    /// The text is not valid TOML.
    Syntax,
    /// A key the format does not define.
    UnknownKey,
    /// A value of the wrong TOML type (string where a number belongs...).
    WrongType,
    /// A value of the right type that is not acceptable (bad duration, 0 where ≥ 1...).
    BadValue,
    /// A required key is absent.
    Missing,
    /// A name or address defined twice.
    Duplicate,
    /// A name referring to a vMTA, pool, pattern list or DKIM domain that does not exist.
    UnknownReference,
    /// A file named by a key does not exist.
    FileNotFound,
    /// A file named by a key exists but cannot be read (permissions, a directory...).
    FileUnreadable,
}

/// One problem in a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The configuration file as given (or "<embedded default>").
    pub file: String,
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// 1-based column (in characters), with `line`.
    pub column: Option<usize>,
    /// Key path, e.g. `domain."gmail.com".max_smtp_out` or `listener[1].address`.
    pub key: String,
    /// The category of the problem.
    pub kind: ConfigErrorKind,
    /// What is wrong, for a human.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.reason)
        } else {
            write!(f, ": {}: {}", self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every error found while loading one configuration, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The errors; never empty when returned from `load`.
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// Number of errors.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Iterates the errors.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.errors.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A warning: accepted, but probably not what the operator wants
/// (e.g. `sync = "none"`). Printed by `spate check` and logged at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    /// Key path.
    pub key: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What to watch out for.
    pub reason: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.key, self.reason),
            None => write!(f, "{}: {}", self.key, self.reason),
        }
    }
}
