//! Codec errors. Every error names the config key (and the option inside a property string)
//! at fault, so an operator can find it.

/// Why a config file or property string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// A line that is neither a `key: value` entry, a comment, a blank nor a section header.
    #[error("line {line}: cannot parse '{text}': expected 'key: value', '#comment' or '[section]'")]
    Line {
        /// 1-based line number.
        line: usize,
        /// The line, truncated.
        text: String,
    },
    /// A key that is not a PVE config key.
    #[error("line {line}: invalid key '{key}'")]
    Key {
        /// 1-based line number.
        line: usize,
        /// The key.
        key: String,
    },
    /// A property string option that is malformed, unknown, repeated or out of range.
    #[error("{key}: option '{option}': {reason}")]
    Option {
        /// The config key, such as `net0`.
        key: String,
        /// The option, such as `tag`.
        option: String,
        /// What is wrong.
        reason: String,
    },
    /// A required option is missing.
    #[error("{key}: missing required option '{option}'")]
    Missing {
        /// The config key.
        key: String,
        /// The option.
        option: String,
    },
}

impl CodecError {
    pub(crate) fn option(key: &str, option: &str, reason: impl Into<String>) -> Self {
        Self::Option {
            key: key.to_string(),
            option: option.to_string(),
            reason: reason.into(),
        }
    }
}
